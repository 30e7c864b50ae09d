"""Protocol presets, validation and serialisation."""

from __future__ import annotations

import dataclasses

import pytest

from critprint.errors import InvalidInputError
from critprint.protocol import DEFAULT_PROTOCOL, TUNED_CHANGES, FeatureSettings, Protocol, get_protocol


def test_paper_preset_matches_published_settings() -> None:
    protocol = get_protocol("paper", "denoise")
    assert (protocol.size, protocol.iterations, protocol.learning_rate) == (128, 5000, 0.1)
    assert (protocol.beta, protocol.tv_weight, protocol.noise_sigma) == (1.0, 1e-3, 1.0)
    assert protocol.features == FeatureSettings(colour_bins=4, lgp_points=16, lgp_radius=2.0)
    assert (protocol.alpha, protocol.sigma_h) == (0.05, 0.015)
    assert protocol.constraint == "clamp"


def test_sr_preset_has_no_noise() -> None:
    protocol = get_protocol("paper", "sr", scale=4)
    assert protocol.noise_sigma == 0.0
    assert protocol.input_size == 32


def test_default_is_tuned_preset() -> None:
    assert DEFAULT_PROTOCOL == "tuned"


@pytest.mark.parametrize("task", ["denoise", "sr", "deblur", "lowlight", "derain", "jpeg"])
def test_tuned_preset_is_quick_plus_task_changes(task: str) -> None:
    scale = 4 if task == "sr" else 1
    quick = get_protocol("quick", task, scale=scale)
    tuned = get_protocol("tuned", task, scale=scale)
    changes = dict(TUNED_CHANGES[task])
    features = changes.pop("features", {})
    assert tuned.name == "tuned"
    assert tuned.features == FeatureSettings(**{**dataclasses.asdict(quick.features), **features})
    assert tuned == quick.replace(name="tuned", features=tuned.features, **changes)
    assert (tuned.size, tuned.iterations) == (quick.size, quick.iterations)


def test_sr_noise_and_schedule_per_preset() -> None:
    assert get_protocol("tuned", "sr", scale=4).noise_sigma == 0.3
    assert get_protocol("tuned", "sr", scale=4).schedule == "cosine"
    assert get_protocol("tuned", "sr", scale=4).learning_rate == 0.15
    assert get_protocol("quick", "sr", scale=4).schedule == "constant"
    assert get_protocol("paper", "sr", scale=4).noise_sigma == 0.0
    assert get_protocol("quick", "sr", scale=4).noise_sigma == 0.0


def test_lowlight_tv_weight_per_preset() -> None:
    assert get_protocol("tuned", "lowlight").tv_weight == 0.0
    assert get_protocol("quick", "lowlight").tv_weight == 1e-3


def test_tuned_custom_task_equals_quick() -> None:
    quick = get_protocol("quick", "custom", custom_degradation="pkg.mod:fn")
    assert get_protocol("tuned", "custom", custom_degradation="pkg.mod:fn") == quick.replace(name="tuned")


def test_round_trip_through_dict() -> None:
    protocol = get_protocol("quick", "sr", scale=4).replace(seed=7)
    assert Protocol.from_dict(protocol.to_dict()) == protocol


def test_unknown_preset_lists_choices() -> None:
    with pytest.raises(InvalidInputError, match="'paper', 'quick'"):
        get_protocol("fast", "denoise")


def test_record_without_schedule_loads_constant() -> None:
    data = get_protocol("paper", "denoise").to_dict()
    del data["schedule"]
    protocol = Protocol.from_dict(data)
    assert protocol.schedule == "constant"
    assert protocol.learning_rate_at(4999) == protocol.learning_rate


def test_cosine_schedule_decays_to_near_zero() -> None:
    protocol = get_protocol("quick", "denoise").replace(schedule="cosine", iterations=100)
    rates = [protocol.learning_rate_at(step) for step in range(1, 101)]
    assert rates[0] == protocol.learning_rate
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    assert rates[-1] < 1e-4


def test_unknown_key_rejected() -> None:
    data = get_protocol("quick", "denoise").to_dict()
    data["colour"] = 3
    with pytest.raises(InvalidInputError, match="unknown keys \\['colour'\\]"):
        Protocol.from_dict(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size": 4}, "invalid size 4"),
        ({"iterations": 0}, "invalid iterations 0"),
        ({"learning_rate": 0.0}, "invalid learning_rate"),
        ({"noise_sigma": -1.0}, "invalid noise_sigma"),
        ({"scale": 2}, "invalid scale 2 for task 'denoise'"),
        ({"constraint": "box"}, "invalid constraint 'box'"),
        ({"alpha": 1.5}, "invalid alpha"),
        ({"schedule": "linear"}, "invalid schedule 'linear'"),
    ],
)
def test_invalid_fields_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        get_protocol("quick", "denoise").replace(**changes)


def test_sr_size_must_divide_by_scale() -> None:
    with pytest.raises(InvalidInputError, match="multiple of the scale"):
        Protocol(name="x", task="sr", size=30, iterations=1, scale=4)
