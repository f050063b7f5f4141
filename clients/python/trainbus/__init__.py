"""trainbus: a client of the trainbus daemon, standard library only.

- :class:`Client` speaks the wire protocol (docs/PROTOCOL.md): connect, subscribe
  (an iterator of events), and the control calls (set_lr, stop, pause, resume,
  checkpoint, submit, cancel, continue_) and queries (status, runs, history).
- :class:`RemoteCallback` has the Keras callback methods; subclass it as you
  would ``keras.callbacks.Callback`` and run it against a daemon with
  :func:`run_callback`. In lockstep mode the trainer waits for the callback at
  each hook it overrides, so ``self.set_lr(...)`` or ``self.model.stop_training
  = True`` takes effect before training goes on, as it would locally.
- :class:`Publisher` puts a training loop of your own on the bus as a trainer:
  call its hook methods; the daemon's clients watch and steer the run.
  :class:`TorchPublisher` steers a ``torch.optim`` optimizer, and
  :class:`KerasPublisher` is a Keras callback (Keras imported only when used).
- :mod:`trainbus.nats` follows runs and sends control through a NATS broker
  that trainbus-bridge publishes into (docs/BRIDGE.md): history, then live.
"""

from .client import (
    Client,
    ConnectionLost,
    Event,
    RemoteError,
    TrainbusError,
    resolve_address,
)
from .callback import RemoteCallback, run_callback
from .publisher import Control, KerasPublisher, Publisher, TorchPublisher, keras_callback

__all__ = [
    "Client",
    "ConnectionLost",
    "Control",
    "Event",
    "KerasPublisher",
    "Publisher",
    "RemoteCallback",
    "RemoteError",
    "TorchPublisher",
    "TrainbusError",
    "keras_callback",
    "resolve_address",
    "run_callback",
]
__version__ = "0.1.0"
