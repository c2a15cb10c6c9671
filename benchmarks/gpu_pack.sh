#!/usr/bin/env bash
# Packs what benchmarks/gpu.sh needs on a GPU machine that has PyTorch and transformers but no
# package index and takes at most 64 MiB per call: the missing wheels (for its Python 3.12) and
# the embedded model's GGUF file (94 MiB) in two halves, one per call.
#   .gpu/one/: wheels + first half   (carry it in the call that runs `gpu.sh stage`)
#   .gpu/two/: second half           (carry it in the call that runs `gpu.sh run "$OUT"`)
# Run from the repository root, on a machine with the project's .venv and a package index.
set -euo pipefail
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/one/wheels .gpu/two
# The device image lacks these (its PyTorch, transformers, accelerate, jaxtyping, pandas, ...
# serve as they are); --no-deps: only what steerlens imports, nothing that would replace the
# image's own packages.
pkgs=$("$PY" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in
               ("transformer-lens", "datasets", "dill", "multiprocess", "gguf")))
PY
)
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .gpu/one/wheels $pkgs
gguf=$("$PY" -c "from steerlens.loading.model import embedded_gguf_path as p; print(p())")
half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
head -c "$half" "$gguf" >.gpu/one/model.part1
tail -c +"$((half + 1))" "$gguf" >.gpu/two/model.part2
sha256sum "$gguf" | cut -c1-64 >.gpu/two/model.sha256
du -sh .gpu/one .gpu/two
ls .gpu/one/wheels
