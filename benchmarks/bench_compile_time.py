"""Time the first torch.compile (inductor, CPU) of pytorch/examples' word_language_model RNN_TANH model with
nn.RNN or FusedWCRNN.from_rnn(nn.RNN) inside, each in a fresh inductor cache folder.

    python benchmarks/bench_compile_time.py rnn|fused [--warm-pch] [--breakdown]

--warm-pch first compiles an unrelated one-line function (untimed), so inductor's precompiled header, which any
model's first generated CPU kernel pays for once per cache folder (about 9 s on the quiet 2-core machine), is not
part of the timing. The timed part is the first compiled forward and backward. TORCH_LOGS=output_code lists the
generated kernels.
"""
import os
import sys
import tempfile
import time

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="wcrnn_compile_time_")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from wcrnn_kernels import FusedWCRNN  # noqa: E402

which = sys.argv[1] if len(sys.argv) > 1 else "fused"
if which not in ("rnn", "fused"):
    sys.exit("usage: bench_compile_time.py rnn|fused [--warm-pch] [--breakdown]")
torch.manual_seed(0)


class RNNModel(nn.Module):  # word_language_model/model.py, RNN_TANH, untied
    def __init__(self, ntoken=1000, ninp=64, nhid=64, nlayers=2, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        rnn = nn.RNN(ninp, nhid, nlayers, dropout=dropout)
        self.rnn = rnn if which == "rnn" else FusedWCRNN.from_rnn(rnn)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):  # as word_language_model writes it
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, 1000)
        return nn.functional.log_softmax(decoded, dim=1), hidden


m = RNNModel()
x, y = torch.randint(0, 1000, (35, 20)), torch.randint(0, 1000, (35, 20))
h = torch.zeros(2, 20, 64)
if "--warm-pch" in sys.argv:
    torch.compile(lambda t: t.sin() * 2 + 1)(torch.randn(64))
m(x, h)  # eager once: the C++ library loads outside the timed region
cm = torch.compile(m)
t0 = time.perf_counter()
out, hn = cm(x, h)
loss = nn.functional.nll_loss(out, y.view(-1))
t1 = time.perf_counter()
loss.backward()
t2 = time.perf_counter()
print(f"{which}: first compiled forward {t1 - t0:.1f} s, backward {t2 - t1:.1f} s, total {t2 - t0:.1f} s")
if "--breakdown" in sys.argv:
    from torch._dynamo.utils import compile_times
    names, values = compile_times(repr="csv", aggregate=True)
    print(dict(zip(names, values)))
