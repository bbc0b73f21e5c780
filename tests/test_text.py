import torch

from textseg.text import TextEncoder, encode_text_trimmed, get_templates, trim_tokens


def test_template_sets():
    assert get_templates("single") == ("a photo of a {}.",)
    t = get_templates("imagenet80")
    assert len(t) == 80 and len(set(t)) == 80 and all("{}" in x for x in t)


@torch.no_grad()
def test_trimmed_encoding_equals_full_77_token_pass(tiny_model):
    clip = tiny_model.clip
    tokens = tiny_model.tokenizer(["a photo of a dog.", "a very long and winding description of a red bus"])
    full = clip.encode_text(tokens)
    torch.testing.assert_close(encode_text_trimmed(clip, tokens), full, atol=1e-5, rtol=1e-5)


def test_host_trimmed_tokens_give_the_full_pass_values_and_gradients():
    import textseg

    model = textseg.create_model("tiny", pretrained=False, seed=0)  # its own: the shared one may be frozen
    clip = model.clip.train()
    tokens = model.tokenizer(["a dog.", "a very long and winding description of a red bus", "cat"])
    short = trim_tokens(tokens)
    eot = tokens.argmax(-1)
    assert short.shape == (3, int(eot.max()) + 1) and short.shape[1] < tokens.shape[1]
    assert torch.equal(short, tokens[:, : short.shape[1]]) and torch.equal(short.argmax(-1), eot)
    assert trim_tokens(tokens[:0]).shape == (0, tokens.shape[1])

    weights = torch.tensor([1.0, -2.0, 0.5])
    grads = []
    for encode in (lambda: clip.encode_text(tokens), lambda: encode_text_trimmed(clip, short, trimmed=True)):
        clip.zero_grad()
        with torch.enable_grad():
            out = encode()
        (out.sum(-1) * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in clip.named_parameters() if p.grad is not None})
        grads.append(out.detach())
    torch.testing.assert_close(grads[3], grads[1], atol=1e-5, rtol=1e-5)
    assert "token_embedding.weight" in grads[2] and grads[0].keys() == grads[2].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[2][name], grads[0][name], atol=1e-4, rtol=1e-3, msg=name)
    clip.zero_grad()


def test_text_cache_hit_in_memory_and_on_disk(tiny_model, tmp_path):
    enc = TextEncoder(tiny_model.clip, tiny_model.tokenizer, cache_dir=tmp_path)
    first = enc.encode_classes(["dog", "cat"], "imagenet80")
    assert enc.num_encoded_prompts == 160
    again = enc.encode_classes(["cat", "dog"], "imagenet80")
    assert enc.num_encoded_prompts == 160  # no second encode
    torch.testing.assert_close(again, first.flip(0))
    assert abs(float(first.norm(dim=-1)[0]) - 1.0) < 1e-5
    # a new encoder (a new process) reads the disk cache; only the new class is encoded
    enc2 = TextEncoder(tiny_model.clip, tiny_model.tokenizer, cache_dir=tmp_path)
    out = enc2.encode_classes(["dog", "cat", "bird"], "imagenet80")
    assert enc2.num_encoded_prompts == 80
    torch.testing.assert_close(out[:2], first)
    # another template set is another key
    enc2.encode_classes(["dog"], "single")
    assert enc2.num_encoded_prompts == 81


def test_class_embedding_is_normalised_template_mean(tiny_model):
    enc = TextEncoder(tiny_model.clip, tiny_model.tokenizer, cache_dir=False)
    temps = ("a photo of a {}.", "a drawing of a {}.")
    got = enc.encode_classes(["sheep"], temps)[0]
    each = enc.encode_prompts([t.format("sheep") for t in temps])
    expected = torch.nn.functional.normalize(each.mean(0), dim=0)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
