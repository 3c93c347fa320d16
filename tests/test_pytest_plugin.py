"""The pytest plugin as a downstream project meets it: tests/downstream is a model library with
its own conftest and pytest.ini (--strict-markers), run as its own pytest session here."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

DOWNSTREAM = Path(__file__).with_name("downstream")


@pytest.fixture(scope="module")
def junit(tmp_path_factory: pytest.TempPathFactory) -> ET.Element:
    xml = tmp_path_factory.mktemp("downstream") / "junit.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", f"--junitxml={xml}", "-o", "junit_family=xunit1", "tests", "culprits"],
        cwd=DOWNSTREAM,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # the culprits must fail
    return ET.parse(xml).getroot()


def _case(root: ET.Element, name: str) -> ET.Element:
    found = [tc for tc in root.iter("testcase") if tc.get("name") == name]
    assert len(found) == 1, name
    return found[0]


def _failure(root: ET.Element, name: str) -> str:
    failure = _case(root, name).find("failure")
    assert failure is not None, f"{name} passed"
    return failure.get("message", "") + (failure.text or "")


def test_a_clean_model_passes_with_its_torch_recorded(junit: ET.Element) -> None:
    case = _case(junit, "test_tiny_lm_survives_every_format")
    assert case.find("failure") is None and case.find("error") is None
    properties = {p.get("name"): p.get("value") for p in junit.iter("property")}
    import torch

    assert properties["torch"] == torch.__version__
    assert "cpu" in (properties["devices"] or "").split(",")
    assert int(properties["checkpoint_ok"] or 0) > 0


def test_a_plain_tensor_attribute_is_named(junit: ET.Element) -> None:
    message = _failure(junit, "test_scaled_lm")
    assert "attributes['scale']: not_saved: a plain tensor attribute" in message
    assert "register_buffer" in message


def test_a_random_non_persistent_buffer_is_named(junit: ET.Element) -> None:
    message = _failure(junit, "test_shifted_lm")
    assert "buffers['shift']: not_saved: a non-persistent buffer" in message
    assert "mask" not in message  # the deterministic causal mask is not blamed


def test_a_tie_that_comes_apart_is_named(junit: ET.Element) -> None:
    message = _failure(junit, "test_reference_tied_lm")
    assert "attributes['tied[0]']: aliasing: held the state-dict entry 'emb.weight'" in message
    assert "load_state_dict(assign=True)" in message


def test_inputs_the_model_cannot_run_fail_the_test_saying_so(junit: ET.Element) -> None:
    message = _failure(junit, "test_inputs_the_model_cannot_run")
    assert "checkpoint_roundtrip: inputs=the example inputs: the model's forward raises on them" in message
    assert "Embedding" in message or "Long" in message or "Int" in message, message  # what torch said


def test_markers_are_registered() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--markers", "-p", "no:cacheprovider"],
        cwd=DOWNSTREAM,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "@pytest.mark.checkpoint_formats" in done.stdout
    assert "@pytest.mark.cuda" in done.stdout


def test_an_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_bad.py").write_text(
        "import torch\n"
        "def test_it(checkpoint_roundtrip):\n"
        "    checkpoint_roundtrip(lambda: torch.nn.Linear(2, 2), torch.ones(1, 2), formats=['nope'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_bad.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "checkpoint_roundtrip(formats=['nope']): unknown format 'nope'" in done.stdout + done.stderr
