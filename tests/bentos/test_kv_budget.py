"""The KV-cache budget: bytes per token from a version's metadata, reserve and free, never past capacity."""

from __future__ import annotations

import pytest

from bentos.dataplane.decode.kv_budget import KvBudget, bytes_per_token


def test_bytes_per_token_is_keys_and_values_of_every_layer_and_head() -> None:
    # GPT-2 small: 12 layers, 12 heads of 64, fp32 -> 2 * 12 * 12 * 64 * 4 = 73,728 bytes a token
    assert bytes_per_token({"layers": 12, "kv_heads": 12, "head_dim": 64, "kv_dtype": "float32"}) == 73_728
    # grouped-query attention stores fewer KV heads than query heads; fp16 halves it again
    assert bytes_per_token({"layers": 6, "kv_heads": 2, "head_dim": 64, "kv_dtype": "float16"}) == 3_072
    with pytest.raises(ValueError, match="layers, kv_heads, head_dim"):
        bytes_per_token({"layers": 6, "head_dim": 64})
    with pytest.raises(ValueError, match="positive"):
        bytes_per_token({"layers": 0, "kv_heads": 2, "head_dim": 64})


def test_reserve_and_free_keep_the_arithmetic_and_never_pass_capacity() -> None:
    budget = KvBudget(total_bytes=1000 * 100 + 99, token_bytes=100)  # 1,000 tokens; the spare bytes hold none
    assert budget.capacity == 1000 and budget.occupancy == 0.0
    assert budget.reserve("a", 600) and budget.reserve("b", 400)
    assert budget.occupancy == 1.0 and not budget.reserve("c", 1)
    assert budget.free("a") == 600 and budget.used == 400
    assert budget.free("a") == 0 and budget.used == 400  # freeing twice gives nothing back twice
    assert not budget.reserve("c", 601) and budget.reserve("c", 600) and budget.used == 1000
    with pytest.raises(ValueError, match="already holds"):
        budget.reserve("c", 1)
    assert not budget.reserve("d", 0) and budget.fits(1000) and not budget.fits(1001)
    budget.free("b")
    budget.free("c")
    assert budget.used == 0 and budget.occupancy == 0.0
    with pytest.raises(ValueError, match="holds no token"):
        KvBudget(total_bytes=50, token_bytes=100)
