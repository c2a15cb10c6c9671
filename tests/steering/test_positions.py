import pytest
import torch

from steerlens.errors import SpecError
from steerlens.runtime import TokenContext
from steerlens.steering.positions import Positions, as_positions


def _ctx(start, end, offset=0):
    return TokenContext(torch.tensor(start), torch.tensor(end), offset)


def test_prompt_and_generated_with_left_padding_and_cache():
    # Row 0 has 2 pads, row 1 none; the padded prompt ends at 5; 5 tokens are cached.
    ctx = _ctx([2, 0], [5, 5])
    assert Positions.prompt().mask(ctx, 5).int().tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    cached = _ctx([2, 0], [5, 5], offset=5)
    assert Positions.prompt().mask(cached, 1).tolist() == [[False], [False]]
    assert Positions.generated().mask(cached, 1).tolist() == [[True], [True]]
    assert Positions.all().mask(cached, 1) is None


def test_opening_is_the_prompt_and_the_first_generated_tokens():
    # Row 0 has 2 pads; the prompt ends at 4; the first step sees the prompt and one token.
    ctx = _ctx([2, 0], [4, 4])
    assert Positions.opening(2).mask(ctx, 5).int().tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    # With 5 tokens cached, the 2nd generated token (position 5) is steered, the 3rd is not.
    assert Positions.opening(2).mask(_ctx([2, 0], [4, 4], offset=5), 1).tolist() == [[True]] * 2
    assert Positions.opening(2).mask(_ctx([2, 0], [4, 4], offset=6), 1).tolist() == [[False]] * 2
    assert as_positions("opening:3") == Positions.opening(3)
    assert Positions.opening(3).describe() == "prompt and first 3 generated tokens"


def test_last_n_slice_and_indices_are_relative_to_each_prompt():
    ctx = _ctx([2, 0], [6, 6])
    assert Positions.last(2).mask(ctx, 6).int().tolist() == [[0, 0, 0, 0, 1, 1]] * 2
    assert Positions.at(slice(0, 2)).mask(ctx, 6).int().tolist() == [
        [0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0],
    ]
    assert Positions.at([0, -1]).mask(ctx, 6).int().tolist() == [
        [0, 0, 1, 0, 0, 1],
        [1, 0, 0, 0, 0, 1],
    ]
    assert Positions.at(slice(-3, None)).mask(ctx, 6).int().tolist() == [[0, 0, 0, 1, 1, 1]] * 2


def test_as_positions_reads_all_forms():
    assert as_positions(None) == Positions.all()
    assert as_positions("prompt") == Positions.prompt()
    assert as_positions("last:4") == Positions.last(4)
    assert as_positions([1, 2]) == Positions.at([1, 2])
    assert as_positions(slice(1, 3)) == Positions.at(slice(1, 3))
    p = Positions.at([0, -2])
    assert Positions.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("bad", ["middle", "last:x", "last:0", "opening:0", 3.5, [], [1.5]])
def test_unknown_position_specs_are_refused(bad):
    with pytest.raises(SpecError):
        as_positions(bad)
