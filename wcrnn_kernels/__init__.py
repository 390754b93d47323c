"""wcrnn_kernels: fused weakly coupled residual recurrent networks (WCRNNs).

    x_t = R(x_{t-1}) + gamma * phi(W_hh x_{t-1} + W_ih s_t + b)

``FusedWCRNN`` is a drop-in for ``torch.nn.RNN``; ``wcrnn_chain`` is the fused single-layer op;
``wcrnn_layer_ref`` / ``wcrnn_chain_ref`` are the plain-PyTorch specification; ``available_backends()``
says which backends run here. ``init``, ``dynamics`` and ``tasks`` hold the paper's toolkit: residual
initialisations, Lyapunov spectra and memory tasks.
"""
from . import dynamics, init, tasks
from .backends import BackendUnavailableError, available_backends
from .dynamics import lyapunov_spectrum, residual_log_spectrum
from .module import FusedWCRNN
from .ops import wcrnn_chain
from .reference import wcrnn_chain_ref, wcrnn_layer_ref
from .residual import RES_DENSE, RES_DIAG, RES_ROT, RESIDUAL_KINDS, ResidualForm, canonical_residual

__version__ = "0.1.0"

__all__ = [
    "FusedWCRNN", "wcrnn_chain", "wcrnn_chain_ref", "wcrnn_layer_ref", "available_backends",
    "BackendUnavailableError", "canonical_residual", "ResidualForm", "RESIDUAL_KINDS", "RES_DIAG", "RES_ROT",
    "RES_DENSE",
    "init", "dynamics", "tasks", "lyapunov_spectrum", "residual_log_spectrum",
]
