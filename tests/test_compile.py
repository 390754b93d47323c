"""torch.compile(fullgraph=True) runs a model that uses FusedWCRNN, forward and backward, as eager does."""
from __future__ import annotations

import pytest
import torch

from wcrnn_kernels import FusedWCRNN


class Classifier(torch.nn.Module):
    def __init__(self, backend, residual):
        super().__init__()
        self.rnn = FusedWCRNN(3, 8, num_layers=2, bidirectional=True, residual=residual, r=0.98, gamma=0.3,
                              learn_residual=True, learn_gamma=True, backend=backend, batch_first=True)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x):
        out, h_n = self.rnn(x)
        return self.head(out[:, -1]) + h_n.sum(0).sum(-1, keepdim=True)


@pytest.mark.parametrize("residual", ["scalar", "rotational", "dense"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_compile_fullgraph_matches_eager(backend, residual):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Classifier(backend, residual)
    x = torch.randn(4, 9, 3)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for (n, _), g, e in zip(model.named_parameters(), grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_compile_inductor_fullgraph():
    """The default inductor backend too (it generates C++ for the rest of the graph on CPU)."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = Classifier("auto", "diagonal")
    x = torch.randn(2, 5, 3)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_opcheck_on_the_custom_ops():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch are consistent."""
    from wcrnn_kernels.ops import _chain_fwd
    torch.manual_seed(2)
    T, B, H = 4, 3, 6
    args = (torch.randn(T, B, H, requires_grad=True), torch.randn(B, H, requires_grad=True),
            torch.randn(H, H, requires_grad=True), torch.rand(2, H, requires_grad=True),
            torch.rand(H, requires_grad=True), torch.tensor([4, 1, 2]), 1, 0, "torch", True)
    torch.library.opcheck(_chain_fwd, args)
    torch.library.opcheck(_chain_fwd, args[:5] + (None, 1, 1, "torch", True))  # no lengths, relu
    nograd = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in args)
    torch.library.opcheck(_chain_fwd, nograd[:-1] + (False,))  # inference: nothing saved
