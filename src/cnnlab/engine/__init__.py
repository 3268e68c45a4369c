"""The training engine: one step, epochs with callbacks, the precision policy, checkpoints and
the processes of a run (state, loop, fit, callbacks, checkpoint, precision, optim, losses, ema, mix,
device, distributed)."""
