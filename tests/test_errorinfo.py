from __future__ import annotations

import pickle

from ckpt_compat.errorinfo import ErrorInfo, one_line, refused_global


def test_an_exception_keeps_its_type_whole_message_and_cause() -> None:
    long = "x" * 2000
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError(f"\x1b[31mouter\x1b[0m\n  {long}") from inner
    except RuntimeError as exc:
        info = ErrorInfo.of(exc)
    assert info.type == "RuntimeError" and info.message == f"outer {long}"  # nothing cut
    assert info.cause == ErrorInfo("KeyError", "'inner'")
    assert [e.type for e in info.chain()] == ["RuntimeError", "KeyError"]
    assert ErrorInfo.from_json(info.to_json()) == info


def test_the_refused_global_is_found_in_the_unpicklers_words_and_through_a_rewording() -> None:
    message = "Weights only load failed. Unsupported global: GLOBAL numpy._core.multiarray._reconstruct was not allowed"
    assert refused_global(message) == "numpy._core.multiarray._reconstruct"
    assert refused_global("Trying to load unsupported GLOBAL argparse.Namespace whose module") == "argparse.Namespace"
    try:
        try:
            raise pickle.UnpicklingError(message)
        except pickle.UnpicklingError as inner:
            raise ValueError("refused, in other words") from inner
    except ValueError as exc:
        assert ErrorInfo.of(exc).refused_global == "numpy._core.multiarray._reconstruct"
    assert one_line(" a\n\tb  ") == "a b"
