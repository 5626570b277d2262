"""Text <-> token ids, and the chapter's `generate` with a KV cache.

`generate` is the book's function (top-k, temperature, greedy, stop at an end
token, crop to the context) with one change in how it computes, not in what it
returns: keys and values of earlier tokens are kept in a cache, so each new token
costs one position of compute instead of the whole sequence. Greedy outputs with
and without the cache are the same token for token.
"""

import torch

from ftlib.config import MAX_NEW_TOKENS  # noqa: F401 (the one default answer length)
from ftlib.data.tokenizer import END_OF_TEXT


def text_to_token_ids(text, tokenizer):
    """Encode `text` as a (1, num_tokens) tensor: a batch of one.

    `<|endoftext|>` in the text becomes its token id 50256.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    encoded = tokenizer.encode(text, allowed_special={END_OF_TEXT})
    return torch.tensor(encoded).unsqueeze(0)  # (1, num_tokens)


def token_ids_to_text(token_ids, tokenizer):
    """Decode a (1, num_tokens) tensor (or a 1-D one) back to text.

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    flat = token_ids.squeeze(0)  # (num_tokens,)
    return tokenizer.decode(flat.tolist())


def _next_token(logits, temperature, top_k):
    """Pick the next token from (b, vocab) logits: top-k filter, then sample or argmax."""
    if top_k is not None:
        top_logits, _ = torch.topk(logits, top_k)  # (b, top_k), largest first
        min_val = top_logits[:, -1:]               # (b, 1): the k-th largest per row
        logits = torch.where(logits < min_val, torch.full_like(logits, float("-inf")), logits)
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)  # (b, vocab)
        return torch.multinomial(probs, num_samples=1)       # (b, 1)
    return torch.argmax(logits, dim=-1, keepdim=True)        # (b, 1)


def _last_logits(model, idx, kv_cache=None):
    """Logits for the last position only: (b, t) ids -> (b, vocab).

    The chapter runs the output head on every position and keeps the last; running
    it on the last alone gives the same logits (up to float rounding) and skips most
    of the work for small models, whose (emb_dim x 50257) head is their largest matrix.
    """
    hidden = model.hidden_states(idx, kv_cache=kv_cache)  # (b, t, emb_dim)
    return model.out_head(hidden[:, -1, :])               # (b, vocab)


def _next_logits(model, idx, idx_next, cache, limit, context_size):
    """(logits for the next token, the cache) once `idx_next` was appended to `idx`.

    While the cache has room, only the new token is fed (its position is cache.length).
    Once the window is full, the chapter's loop crops to the last `context_size` tokens,
    which renumbers every token's position from 0, so the cached keys and values
    (computed at other positions) no longer apply: the cache is dropped and the whole
    window runs each step, exactly as the chapter does. The result stays identical and
    memory stays bounded. (A rolling cache that kept old positions would be faster,
    but would give different tokens.)
    """
    if cache is not None and cache.length < limit:
        return _last_logits(model, idx_next, cache), cache
    return _last_logits(model, idx[:, -context_size:]), None


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None,
             eos_id=None, use_cache=True):
    """Append up to `max_new_tokens` tokens to `idx` (b, n) and return (b, n + new).

    As in the chapter: the model sees at most the last `context_size` tokens;
    `top_k` keeps only the k most likely tokens; `temperature > 0` samples with
    `torch.multinomial` (seed with `torch.manual_seed` to repeat a run), while
    `temperature == 0` takes the most likely token (greedy).

    `eos_id`: generation stops when it is produced; it is not appended. With a batch
    of several rows, a row that has produced `eos_id` is padded with `eos_id` until
    every row has, and then generation stops.

    `use_cache=True` feeds the prompt once, then one token per step (the KV cache);
    `use_cache=False` runs the whole (cropped) sequence every step, as the chapter
    does. Both give the same tokens; the cache is faster.

    Runs under `torch.no_grad()` and leaves the model's train/eval mode as it is:
    call `model.eval()` first so dropout is off (the chapter's models use none).

    Introduced in: notebooks/05_loading_gpt2.ipynb
    """
    if max_new_tokens <= 0:
        return idx
    with torch.no_grad():
        cache = model.new_kv_cache() if use_cache else None
        # The cache may hold at most this many positions before the window slides.
        limit = min(context_size, cache.max_len) if cache is not None else context_size
        logits = _last_logits(model, idx[:, -context_size:], cache)  # (b, vocab)
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)

        for step in range(max_new_tokens):
            idx_next = _next_token(logits, temperature, top_k)  # (b, 1)
            if eos_id is not None:
                finished |= idx_next.squeeze(1) == eos_id
                if bool(finished.all()):
                    break  # as the chapter: the end token is not appended
                # Rows that have ended keep producing eos_id, so every row has the same length.
                idx_next = idx_next.masked_fill(finished.unsqueeze(1), eos_id)
            idx = torch.cat((idx, idx_next), dim=1)  # (b, n + step + 1)
            if step == max_new_tokens - 1:
                break  # no logits are needed after the last token

            logits, cache = _next_logits(model, idx, idx_next, cache, limit, context_size)
    return idx


def generate_and_print_sample(model, tokenizer, device, start_context,
                              max_new_tokens=MAX_NEW_TOKENS):
    """Print a greedy continuation of `start_context` on one line (the chapter's helper).

    Switches the model to eval mode for the sample and restores its mode afterwards.

    Not in a notebook: the book's helper that `train_model_simple` calls after each epoch
    (notebook 06 shows its output).
    """
    was_training = model.training
    model.eval()
    try:
        context_size = model.cfg["context_length"]
        encoded = text_to_token_ids(start_context, tokenizer).to(device)
        token_ids = generate(model, encoded, max_new_tokens, context_size)
        print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "))
    finally:
        model.train(was_training)


def generate_stream(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None,
                    eos_id=None):
    """`generate` for one row (`idx` is (1, n)), yielding each new token id as it is made.

    The same tokens as `generate` with the same arguments and seed (a test checks);
    stops before `eos_id`, which is not yielded. Uses the KV cache like `generate`.

    Not in a notebook: the token stream behind ftlib.classroom.chat; learners call `chat_reply`.
    """
    with torch.no_grad():
        cache = model.new_kv_cache()
        limit = min(context_size, cache.max_len)
        logits = _last_logits(model, idx[:, -context_size:], cache)  # (1, vocab)
        for step in range(max_new_tokens):
            idx_next = _next_token(logits, temperature, top_k)  # (1, 1)
            if eos_id is not None and int(idx_next) == eos_id:
                return
            yield int(idx_next)
            idx = torch.cat((idx, idx_next), dim=1)
            if step == max_new_tokens - 1:
                return
            logits, cache = _next_logits(model, idx, idx_next, cache, limit, context_size)
