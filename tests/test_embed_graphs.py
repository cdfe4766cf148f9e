"""Which CUDA graph serves a pass (``kiln.embeddings._graphs``): plain arithmetic, no GPU needed.
tests_gpu/ runs the graphs themselves."""

from __future__ import annotations

from kiln.embeddings._encoder import pass_rows
from kiln.embeddings._graphs import _ROW_BUCKETS, CudaGraphs

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _graphs(budget: int = 65_536) -> CudaGraphs:
    return CudaGraphs(None, "cuda", budget, 256, NAMES)


def test_every_pass_of_short_texts_has_a_graph_captured_ahead():
    # A pass of 7 texts of 23 tokens once needed a (7, 24) graph of its own, captured in the
    # request's time under the encode lock; each new count of texts was another.
    g = _graphs()
    ahead = set(g.common_shapes())
    for width in (1, 8, 9, 17, 23, 24, 31, 33, 64, 100, 128):
        for count in [*range(1, 300), *range(300, 12_000, 97)]:
            left, passes = count, []
            while left:
                rows = pass_rows(left, width, g.max_tokens, None, g)
                assert g.shape(rows, width) in ahead, (count, width, rows)
                passes.append(rows)
                left -= rows
            assert sum(passes) == count


def test_a_pass_pads_at_most_a_third_of_its_rows():
    g = _graphs()
    for rows in range(1, 8193):
        padded, _ = g.shape(rows, 8)
        assert padded >= rows and (padded - rows) / padded <= 1 / 3, (rows, padded)


def test_whole_rows_is_the_largest_bucket_that_fits():
    g = _graphs()
    for rows in range(1, 9000):
        whole = g.whole_rows(rows)
        assert whole in _ROW_BUCKETS and whole <= rows
        assert not [b for b in _ROW_BUCKETS if whole < b <= rows]


def test_a_pass_over_the_token_budget_runs_without_a_graph():
    g = _graphs(budget=4096)
    assert g.shape(129, 32) is None  # 192 rows x 32 tokens > 4096
    assert g.shape(128, 32) == (128, 32)
