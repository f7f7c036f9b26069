"""The shape rules of the integer program's ops: one per op, PyTorch's broadcasting, and
shapes that do not fit are an error (the real programs' shapes are checked against a run
in test_c_export)."""

import pytest
import torch

from intvit.engine import ProgramError
from intvit.engine.ops import OPS
from intvit.engine.shapes import SHAPES, broadcast


def test_every_op_has_a_shape_rule():
    assert set(SHAPES) == set(OPS)


@pytest.mark.parametrize("shapes", [[(2, 1, 5), (3, 1)], [(), (4,)], [(1,), (7, 1)],
                                    [(6, 2), (6, 2), (2,)]])
def test_broadcast_is_pytorchs(shapes):
    assert broadcast(*shapes) == tuple(torch.broadcast_shapes(*shapes))


def test_shapes_that_do_not_broadcast_are_an_error():
    with pytest.raises(ProgramError, match="do not broadcast"):
        broadcast((2, 3), (4, 3))


INDEX_MOVES = [  # (op, input shapes, attrs)
    ("reshape", [(2, 3, 4)], {"shape": [-1, 4, 3]}),
    ("reshape", [(2, 3, 4)], {"shape": [6, -1]}),
    ("transpose", [(2, 3, 4)], {"perm": [0, 2, 1]}),
    ("transpose", [(2, 3, 4)], {"perm": [-1, 0, 1]}),
    ("take", [(2, 3, 4)], {"axis": -2, "index": 1}),
    ("slice", [(2, 3, 4)], {"axis": 2, "start": 1, "end": 3}),
    ("slice", [(2, 3, 4)], {"axis": -3, "start": 0, "end": 1}),
    ("concat", [(2, 3, 4), (2, 5, 4)], {"axis": 1}),
    ("concat", [(2, 3, 4), (2, 3, 1)], {"axis": -1}),
    ("broadcast", [(1, 3, 4), (5, 2)], {}),
    ("roll", [(2, 3, 4)], {"shifts": [1, -2], "dims": [1, 2], "sizes": [3, 4]}),
    ("pad", [(2, 3, 4)], {"pads": [(0, 0), (1, 2), (0, 3)]}),
    ("pad", [(2, 3, 4)], {"pads": [(2, 1)]}),
    ("sum", [(2, 3, 4)], {"axis": -1, "bits": 32}),
]


@pytest.mark.parametrize("op,shapes,attrs", INDEX_MOVES)
def test_index_move_shapes_equal_the_ops(op, shapes, attrs):
    ins = [torch.zeros(s, dtype=torch.int64) for s in shapes]
    assert SHAPES[op](shapes, attrs, {}) == tuple(OPS[op](*ins, **attrs).shape)


def test_where_broadcasts_its_mask():
    x, cond = torch.zeros(1, 3, 4, dtype=torch.int64), torch.zeros(2, 1, 4, dtype=torch.bool)
    got = SHAPES["where"]([(1, 3, 4), (2, 1, 4)], {"fill": -1}, {})
    assert got == tuple(OPS["where"](x, cond, fill=-1).shape) == (2, 3, 4)


def test_reshape_to_another_element_count_is_an_error():
    with pytest.raises(ProgramError, match="cannot reshape"):
        SHAPES["reshape"]([(2, 3, 4)], {"shape": [5, -1]}, {})
