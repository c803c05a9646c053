"""EntropyLoggingCallback's controller figure and its history across checkpoints (the scalars and
images of a real run are read back from TensorBoard in tests/e2e/test_aepo_cli.py)."""

import math

from callbacks.entropy_logging import EntropyLoggingCallback


def test_old_checkpoint_history_gains_nan_curves_and_the_figure_draws_every_controller():
    old = {"history": {"step": [0, 1], "easy/response_length": [9.0, 8.0], "easy/n_hwe": [2.0, 1.0]}}
    cb = EntropyLoggingCallback()
    cb.load_state_dict(old)
    assert cb.history["easy/response_length"] == [9.0, 8.0]
    assert len(cb.history["hard/alpha"]) == 2 and all(math.isnan(x) for x in cb.history["hard/alpha"] + cb.history["tau"])
    cb.history["step"].append(2)
    cb.history["tau"].append(0.8)
    for name, alpha in (("easy", 0.7), ("medium", 0.5), ("hard", 0.2)):
        for key, value in (("alpha", alpha), ("target", 3.0), ("setpoint", 2.0), ("response_length", 7.0), ("n_hwe", 1.0)):
            cb.history[f"{name}/{key}"].append(value)
    fig = cb.controller_figure()
    alpha_ax, target_ax, tau_ax = fig.axes
    assert [line.get_label() for line in alpha_ax.lines] == ["easy", "medium", "hard"]
    assert [float(line.get_ydata()[-1]) for line in alpha_ax.lines] == [0.7, 0.5, 0.2]
    assert len(target_ax.lines) == 6  # T_d and T*_d per bucket
    assert list(tau_ax.lines[0].get_xdata()) == [0, 1, 2] and float(tau_ax.lines[0].get_ydata()[-1]) == 0.8
    # and the state round-trips
    back = EntropyLoggingCallback()
    back.load_state_dict(cb.state_dict())
    assert back.history["easy/alpha"][-1] == 0.7 and back.history["step"] == [0, 1, 2]
