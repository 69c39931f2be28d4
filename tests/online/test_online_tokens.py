"""Per-token forwards: they add up to the sequence log-probs RLOO uses, on the chunked path and the model's own
forward alike; entropies, values and their positions; the value models."""

from __future__ import annotations

import pytest
import torch

import alignkit.online.tokens as tokens_module
from alignkit.models.generate import Completion
from alignkit.models.kl import completion_logps
from alignkit.models.padding import pad_rows
from alignkit.online.ppo import entropy_from_logits
from alignkit.online.tokens import ValueHead, token_forward, value_forward, value_model_from_policy

COMPLETIONS = [  # prompts of other lengths, completions of other lengths
    Completion(0, "", [464, 3290, 318], [257, 922, 1110, 13]),
    Completion(1, "", [40], [1101, 50256]),
    Completion(2, "", [1212, 318, 257, 1332, 286], [326]),
]


@pytest.mark.parametrize("model_name", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("chunked", [True, False])
def test_token_logps_add_up_to_the_sequence_logps(request, monkeypatch, model_name, chunked):
    model = request.getfixturevalue(model_name)
    if not chunked:  # an architecture the chunked path does not know: the model's own forward
        monkeypatch.setattr(tokens_module, "lm_head_parts", lambda m: None)
    expected = completion_logps(model, COMPLETIONS, batch_size=3, pad_token_id=0)
    head = ValueHead(32)
    with torch.no_grad():
        head.linear.weight.normal_()
        out = token_forward(model, COMPLETIONS, 0, chunk_size=2, value_head=head, entropy=True)
    assert out.mask.tolist() == [[True] * 4, [True, True, False, False], [True, False, False, False]]
    torch.testing.assert_close(out.logps.sum(1), expected, rtol=1e-5, atol=1e-5)
    assert float(out.logps[~out.mask].abs().sum()) == 0.0
    # Entropies and values are read at the positions that predict each completion token.
    for row, c in enumerate(COMPLETIONS):
        ids = torch.tensor([c.prompt_ids + c.completion_ids])
        with torch.no_grad():
            full = model(input_ids=ids, output_hidden_states=True)
        p, n = len(c.prompt_ids), len(c.completion_ids)
        logits = full.logits[:, p - 1:p + n - 1]  # (1, n, V)
        torch.testing.assert_close(out.entropy[row, :n].mean(), entropy_from_logits(logits, torch.ones(1, n)),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.values[row, :n], head(full.hidden_states[-1][0, p - 1:p + n - 1]),
                                   rtol=1e-4, atol=1e-5)


def test_gradients_flow_to_the_policy_and_the_head(tiny_gpt2):
    head = ValueHead(32)
    out = token_forward(tiny_gpt2, COMPLETIONS, 0, chunk_size=3, value_head=head)
    (out.logps.sum() + out.values.sum()).backward()
    assert tiny_gpt2.transformer.h[0].attn.c_attn.weight.grad is not None
    assert head.linear.weight.grad is not None and float(head.linear.weight.grad.abs().sum()) > 0


def test_a_separate_value_model_copies_the_decoder(tiny_gpt2):
    value = value_model_from_policy(tiny_gpt2)
    assert value.body is not tiny_gpt2.transformer
    assert all(torch.equal(a, b) for a, b in zip(value.body.parameters(), tiny_gpt2.transformer.parameters(),
                                                  strict=True))
    values = value_forward(value, COMPLETIONS, 0).detach()
    assert values.shape == (3, 4) and float(values.abs().sum()) == 0.0  # the fresh head is zero
    with torch.no_grad():
        value.head.linear.bias.fill_(1.5)
    assert value_forward(value, COMPLETIONS, 0)[0].detach().tolist() == [1.5] * 4


def test_an_empty_prompt_is_refused(tiny_gpt2):
    with pytest.raises(ValueError, match="empty prompt"):
        token_forward(tiny_gpt2, [Completion(0, "", [], [257])], 0)


def test_pad_rows():
    assert pad_rows([torch.tensor([1.0, 2.0]), torch.tensor([3.0])]).tolist() == [[1.0, 2.0], [3.0, 0.0]]
    assert pad_rows([torch.tensor([1.0])], 3).tolist() == [[1.0, 0.0, 0.0]]
