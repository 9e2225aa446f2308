"""The prefix cache alone: fake KV arrays whose values are the token positions, so a hit's content is checked."""

from __future__ import annotations

import numpy as np

from bentos.dataplane.decode.prefix_cache import BLOCK, PrefixCache


def kv(tokens: list[int]) -> list[np.ndarray]:
    """Two past inputs, [1, 2 heads, len, 4]: each position holds its token id."""
    a = np.broadcast_to(np.asarray(tokens, np.float32)[None, None, :, None], (1, 2, len(tokens), 4)).copy()
    return [a, a + 0.5]


PROMPT = list(range(100, 100 + 3 * BLOCK + 5))  # three whole blocks and five tokens


def test_a_tenant_hits_its_own_longest_prefix_and_another_tenant_misses() -> None:
    cache = PrefixCache(1000)
    cache.insert(PROMPT, "shop", kv(PROMPT))
    hit = cache.lookup(PROMPT, "shop")
    assert hit is not None and hit.tokens == 3 * BLOCK
    assert hit.past[0].shape == (1, 2, 3 * BLOCK, 4) and list(hit.past[0][0, 0, :, 0]) == PROMPT[:3 * BLOCK]
    assert cache.lookup(PROMPT, "rival") is None  # the same tokens under another key: nothing
    assert cache.lookup(PROMPT, "") is None
    other = PROMPT[:2 * BLOCK] + [7] * 20  # shares two blocks
    assert (hit := cache.lookup(other, "shop")) is not None and hit.tokens == 2 * BLOCK


def test_at_least_one_token_is_left_to_compute() -> None:
    cache = PrefixCache(1000)
    exact = PROMPT[:2 * BLOCK]
    cache.insert(exact, "shop", kv(exact))
    hit = cache.lookup(exact, "shop")  # all of it is cached, but its last token's logits are needed
    assert hit is not None and hit.tokens == BLOCK


def test_a_shared_prefix_is_shared_and_what_follows_it_is_not() -> None:
    system = PROMPT[:2 * BLOCK]
    cache = PrefixCache(1000, shared=[system])
    cache.insert(PROMPT, "shop", kv(PROMPT))
    hit = cache.lookup(PROMPT, "rival")
    assert hit is not None and hit.tokens == 2 * BLOCK  # the system prompt's blocks, not shop's third
    assert cache.lookup(PROMPT, "shop").tokens == 3 * BLOCK  # type: ignore[union-attr]


def test_the_least_recently_used_entry_goes_first_and_a_held_view_survives() -> None:
    cache = PrefixCache(5 * BLOCK)
    a, b, c = ([base + i for i in range(2 * BLOCK + 1)] for base in (1000, 2000, 3000))
    cache.insert(a, "t", kv(a))
    cache.insert(b, "t", kv(b))
    held = cache.lookup(a, "t")  # a is now the most recently used
    cache.insert(c, "t", kv(c))  # 6 blocks would pass 5: b goes
    assert cache.lookup(b, "t") is None and cache.lookup(c, "t") is not None
    assert cache.held <= cache.capacity and len(cache) == 2
    cache.insert([9000 + i for i in range(4 * BLOCK + 1)], "t", kv([9000 + i for i in range(4 * BLOCK + 1)]))
    assert cache.lookup(a, "t") is None  # evicted now, but the view a request holds is unchanged
    assert held is not None and list(held.past[0][0, 0, :, 0]) == a[:2 * BLOCK]


def test_a_prompt_shorter_than_a_block_or_bigger_than_the_cache_is_not_kept() -> None:
    cache = PrefixCache(2 * BLOCK)
    cache.insert(PROMPT[:BLOCK - 1], "t", kv(PROMPT[:BLOCK - 1]))
    cache.insert(PROMPT, "t", kv(PROMPT))  # 3 blocks over a capacity of 2
    assert len(cache) == 0 and cache.held == 0
