"""The valid-curve fit recovers the law a curve was drawn from, reads fairseq-train's own valid
lines (once each, across a resumed training's logs) and refuses a curve too short to fit."""

import json

import numpy as np
import pytest

from benchmarks.valid_curve_limit import fit_power_law, main, valid_curve


def valid_line(updates, loss, epoch=1):
    return (f"2026-12-05 19:44:23 | INFO | valid | epoch {epoch:03d} | valid on 'valid' subset | "
            f"loss {loss} | ppl {2 ** loss:.2f} | wps 10488.8 | wpb 8032.5 | bsz 31.4 | "
            f"num_updates {updates} | best_loss {loss}")


def test_the_fit_recovers_the_limit_of_an_exact_power_law():
    updates = np.arange(1024, 6000, 128, dtype=np.float64)
    losses = 7.2 + 60.0 * updates ** -0.65

    fit = fit_power_law(updates, losses)

    assert fit["c"] == pytest.approx(0.65, abs=1e-3)
    assert fit["a"] == pytest.approx(7.2, abs=2e-3)
    assert fit["b"] == pytest.approx(60.0, rel=2e-2)
    assert fit["rms"] < 1e-4


def test_a_validation_logged_again_by_a_resumed_run_counts_once_with_its_last_value():
    first = "\n".join([valid_line(128, 9.4), valid_line(256, 8.9), "| train | epoch 002 | loss 8.1"])
    resumed = "\n".join([valid_line(256, 8.8, epoch=2), valid_line(384, 8.5, epoch=2)])

    assert valid_curve([first, resumed]) == [(128, 9.4), (256, 8.8), (384, 8.5)]


def test_the_report_gives_the_limit_and_the_fitted_perplexity_at_the_asked_updates(tmp_path, capsys):
    log = tmp_path / "train.log"
    log.write_text("\n".join(valid_line(u, round(7.0 + 40.0 * u ** -0.6, 3))
                             for u in range(128, 4097, 128)))

    main([str(log), "--from-updates", "1024", "--at", "8192"])

    report = json.loads(capsys.readouterr().out)
    assert report["validations"] == 25
    assert report["last"] == {"updates": 4096, "loss": round(7.0 + 40.0 * 4096 ** -0.6, 3),
                              "ppl": round(2 ** round(7.0 + 40.0 * 4096 ** -0.6, 3), 2)}
    assert report["ppl_limit"] == pytest.approx(2 ** 7.0, rel=2e-2)
    assert report["ppl_at"]["8192"] == pytest.approx(2 ** (7.0 + 40.0 * 8192 ** -0.6), rel=2e-3)


def test_too_few_validations_after_from_updates_is_one_error_naming_the_flag(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("\n".join(valid_line(u, 8.0) for u in (128, 256, 1024, 1152, 1280)))

    with pytest.raises(SystemExit) as exit_info:
        main([str(log), "--from-updates", "1024"])

    assert str(exit_info.value) == ("error: 3 validations at or after --from-updates 1024; at "
                                    "least 4 are needed: lower --from-updates")


def test_a_missing_log_is_one_error_naming_the_file(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "absent.log")])

    assert str(exit_info.value) == (f"error: log not found: {tmp_path / 'absent.log'}; pass "
                                    "fairseq-train's log files")
