"""The rule language: every operator, combinator, attribute path, scope and context field."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import TypeAdapter, ValidationError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.route.conditions import Condition
from dicomnode.route.evaluate import EvalContext, evaluate
from dicomnode.route.headers import SeriesView
from dicomnode.route.paths import parse_path

CONDITION = TypeAdapter(Condition)


def dataset(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "2.5"
    ds.SeriesDescription = "Abdomen PV 3.0 "
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientName = "Doe^Jane"
    ds.StudyDescription = ""
    code = Dataset()
    code.CodeValue, code.CodeMeaning = "RPID16", "CT ABDOMEN W CONTRAST"
    code2 = Dataset()
    code2.CodeValue, code2.CodeMeaning = "RPID17", "CT CHEST"
    ds.ProcedureCodeSequence = Sequence([code, code2])
    block = ds.private_block(0x0019, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "FAST")
    ds.add_new(0x00191011, "DS", "7.5")  # an element of another (unknown) creator block slot
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def holds(condition: dict, *datasets: Dataset, **context: object) -> bool:
    headers = datasets or (dataset(),)
    view = SeriesView("1.2.3", "1.2.3.4", (), tuple(headers))
    ctx = EvalContext(view, **context)  # type: ignore[arg-type]
    held, why = evaluate(CONDITION.validate_python(condition), ctx, explain=True)
    assert why is not None and why.held == held  # the explanation agrees with the result
    assert held == evaluate(CONDITION.validate_python(condition), ctx)[0]  # with and without explanation
    return held


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"tag": "Modality", "equals": "CT"}, True),
        ({"tag": "Modality", "equals": "MR"}, False),
        ({"tag": "Modality", "equals": "ct"}, False),
        ({"tag": "Modality", "equals": "ct", "ignore_case": True}, True),
        ({"tag": "SeriesDescription", "equals": "Abdomen PV 3.0"}, True),  # padding ignored
        ({"tag": "SliceThickness", "equals": 2.5}, True),  # numeric comparison of a DS
        ({"tag": "SliceThickness", "equals": "2.5"}, True),
        ({"tag": "ImageType", "equals": "ORIGINAL"}, False),  # multi-valued: use contains
        ({"tag": "ImageType", "equals": ["ORIGINAL", "PRIMARY", "AXIAL"]}, True),
        ({"tag": "ImageType", "equals": ["ORIGINAL", "AXIAL"]}, False),
        ({"tag": "BodyPartExamined", "in": ["CHEST", "ABDOMEN"]}, True),
        ({"tag": "BodyPartExamined", "in": ["CHEST", "HEAD"]}, False),
        ({"tag": "SeriesDescription", "regex": "(?i)pv|portal"}, True),
        ({"tag": "SeriesDescription", "regex": "^PV"}, False),
        ({"tag": "SeriesDescription", "regex": "^abdomen", "ignore_case": True}, True),
        ({"tag": "SliceThickness", "range": [0.5, 5.0]}, True),
        ({"tag": "SliceThickness", "range": [3, None]}, False),
        ({"tag": "SliceThickness", "range": [None, 2.5]}, True),
        ({"tag": "SliceThickness", "gt": 2.5}, False),
        ({"tag": "SliceThickness", "ge": 2.5}, True),
        ({"tag": "SliceThickness", "lt": 3}, True),
        ({"tag": "SliceThickness", "le": 2}, False),
        ({"tag": "SeriesDescription", "gt": 1}, False),  # text is never a number
        ({"tag": "ImageType", "contains": "AXIAL"}, True),
        ({"tag": "ImageType", "contains": "LOCALIZER"}, False),
        ({"tag": "ImageType", "contains": ["AXIAL", "PRIMARY"]}, True),
        ({"tag": "ImageType", "contains": ["AXIAL", "LOCALIZER"]}, False),
        ({"tag": "ImageType", "contains": "axial", "ignore_case": True}, True),
        ({"tag": "Modality", "exists": True}, True),
        ({"tag": "ContrastBolusAgent", "exists": True}, False),
        ({"tag": "ContrastBolusAgent", "exists": False}, True),
        ({"tag": "ContrastBolusAgent", "missing": True}, True),
        ({"tag": "Modality", "missing": True}, False),
        ({"tag": "StudyDescription", "empty": True}, True),  # present without a value
        ({"tag": "StudyDescription", "exists": True}, True),
        ({"tag": "ContrastBolusAgent", "empty": True}, True),  # absent counts as empty
        ({"tag": "Modality", "empty": False}, True),
        ({"tag": "ContrastBolusAgent", "equals": "X"}, False),  # every value operator is false when absent
        ({"tag": "ContrastBolusAgent", "regex": ".*"}, False),
    ],
)
def test_operators(condition: dict, expected: bool) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("(0008,0060)", ("CT",)),
        ("(0018,0015)", ("ABDOMEN",)),
        ("ProcedureCodeSequence[0].CodeValue", ("RPID16",)),
        ("ProcedureCodeSequence[1].CodeMeaning", ("CT CHEST",)),
        ("ProcedureCodeSequence.CodeValue", ("RPID16", "RPID17")),  # all items
        ("ProcedureCodeSequence[*].CodeValue", ("RPID16", "RPID17")),
        ("(0008,1032)[0].(0008,0100)", ("RPID16",)),
        ("ProcedureCodeSequence[5].CodeValue", None),
        ("ProcedureCodeSequence", ("<item>", "<item>")),
        ('(0019,"ACME 1.0",10)', ("FAST",)),  # private tag by creator, whatever block it landed in
        ("(0019,1011)", (7.5,)),
        ('(0019,"OTHER",10)', None),
    ],
)
def test_attribute_paths(path: str, expected: tuple | None) -> None:
    assert parse_path(path).read(dataset()) == expected


def test_private_and_sequence_conditions() -> None:
    assert holds({"tag": '(0019,"ACME 1.0",10)', "equals": "FAST"})
    assert holds({"tag": "ProcedureCodeSequence.CodeMeaning", "regex": "CHEST"})
    assert not holds({"tag": "ProcedureCodeSequence[0].CodeMeaning", "regex": "CHEST"})
    assert holds({"tag": "ProcedureCodeSequence", "exists": True})


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("BodyPartExamnied", "unknown DICOM keyword 'BodyPartExamnied' (did you mean 'BodyPartExamined'?)"),
        ("Modality.CodeValue", "'Modality' in 'Modality.CodeValue' is not a sequence"),
        ("(0018,00G5)", "'(0018,00G5)' in attribute path '(0018,00G5)' is neither a DICOM keyword"),
        ('(0018,"X",10)', "names a private creator in the even group 0018"),
        ("", "non-empty"),
    ],
)
def test_bad_paths_are_named(path: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_path(path)
    assert message in str(info.value)


def test_combinators() -> None:
    yes, no = {"tag": "Modality", "equals": "CT"}, {"tag": "Modality", "equals": "MR"}
    assert holds({"all": [yes, yes]}) and not holds({"all": [yes, no]})
    assert holds({"any": [no, yes]}) and not holds({"any": [no, no]})
    assert holds({"not": no}) and not holds({"not": yes})
    assert holds({"all": [yes, {"not": {"any": [no, {"not": yes}]}}]})


def test_scope_over_instances() -> None:
    first = dataset(ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], SliceThickness="1")
    localizer = dataset(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SliceThickness="10")
    series = (first, localizer, dataset(SliceThickness="1"))
    localizer_test = {"tag": "ImageType", "contains": "LOCALIZER"}
    assert not holds(localizer_test, *series)  # default scope: the first instance
    assert holds({**localizer_test, "scope": "any"}, *series)
    assert not holds({**localizer_test, "scope": "all"}, *series)
    assert holds({"not": {**localizer_test, "scope": "any"}}, first, dataset()) is True
    assert holds({"tag": "SliceThickness", "le": 1, "scope": "all"}, first, first) is True
    assert holds({"tag": "SliceThickness", "le": 1, "scope": "all"}, *series) is False
    assert holds({"tag": "Modality", "equals": "CT", "scope": "all"}, *series) is True


def test_scope_on_a_series_without_instances() -> None:
    view = SeriesView("1.2", "1.2.3", (), ())
    for scope in ("first", "all", "any"):
        condition = CONDITION.validate_python({"tag": "Modality", "exists": True, "scope": scope})
        assert evaluate(condition, EvalContext(view))[0] is False


def test_context_fields() -> None:
    three = (dataset(), dataset(), dataset())
    assert holds({"instances": {"min": 3}}, *three) and not holds({"instances": {"min": 4}}, *three)
    assert holds({"instances": {"equals": 3}}, *three) and holds({"instances": {"max": 3}}, *three)
    assert holds({"series_in_study": {"min": 2}}, series_in_study=2)
    assert not holds({"series_in_study": {"max": 1}}, series_in_study=2)
    assert holds({"calling_ae": "CT_SCANNER_1"}, calling_ae="CT_SCANNER_1")
    assert holds({"calling_ae": {"regex": "^CT_"}}, calling_ae="CT_SCANNER_1")
    assert not holds({"calling_ae": {"in": ["MR1"]}}, calling_ae="CT_SCANNER_1")
    assert not holds({"calling_ae": "CT_SCANNER_1"})  # unknown sender
    assert holds({"called_ae": {"equals": "DICOMNODE"}}, called_ae="DICOMNODE")


@pytest.mark.parametrize(
    ("window", "at", "expected"),
    [
        ({"between": ["18:00", "07:00"]}, datetime(2024, 1, 3, 23, 30), True),  # spans midnight
        ({"between": ["18:00", "07:00"]}, datetime(2024, 1, 3, 6, 59), True),
        ({"between": ["18:00", "07:00"]}, datetime(2024, 1, 3, 7, 0), False),  # end is exclusive
        ({"between": ["18:00", "07:00"]}, datetime(2024, 1, 3, 12, 0), False),
        ({"between": ["08:00", "17:30"]}, datetime(2024, 1, 3, 8, 0), True),
        ({"between": ["08:00", "17:30"]}, datetime(2024, 1, 3, 17, 30), False),
        ({"days": ["sat", "sun"]}, datetime(2024, 1, 6, 12, 0), True),  # a Saturday
        ({"days": ["sat", "sun"]}, datetime(2024, 1, 3, 12, 0), False),  # a Wednesday
        ({"between": ["08:00", "17:00"], "days": ["wed"]}, datetime(2024, 1, 3, 9, 0), True),
    ],
)
def test_receive_time_window(window: dict, at: datetime, expected: bool) -> None:
    assert holds({"time": window}, received_at=at) is expected


def test_study_has_series() -> None:
    ct = SeriesView("1.2", "1.2.1", (), (dataset(),))
    pet = SeriesView("1.2", "1.2.2", (), (dataset(Modality="PT"),))
    condition = CONDITION.validate_python({"study_has_series": {"tag": "Modality", "equals": "PT"}})
    with_pet = EvalContext(ct, series_in_study=2, study_series=lambda: [ct, pet])
    held, why = evaluate(condition, with_pet, explain=True)
    assert held and "1.2.2" in why.text
    without = EvalContext(ct, series_in_study=1, study_series=lambda: [ct])
    held, why = evaluate(condition, without, explain=True)
    assert not held and "no matching series (1 checked)" in why.text


def test_explanations_name_values_and_results() -> None:
    condition = CONDITION.validate_python(
        {"all": [{"tag": "Modality", "equals": "CT"}, {"tag": "BodyPartExamined", "in": ["CHEST"]}]}
    )
    view = SeriesView("1.2", "1.2.3", (), (dataset(),))
    held, why = evaluate(condition, EvalContext(view), explain=True)
    lines = why.lines()
    assert not held
    assert lines[0] == "✗ all of"
    assert lines[1] == "  ✓ Modality equals 'CT' (first instance: 'CT')"
    assert lines[2] == "  ✗ BodyPartExamined in ['CHEST'] (first instance: 'ABDOMEN')"
    assert why.failed_leaves() == ["BodyPartExamined in ['CHEST'] (first instance: 'ABDOMEN')"]


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ({"tag": "Modality"}, "exactly one operator"),
        ({"tag": "Modality", "equals": "CT", "in": ["CT"]}, "(got equals, in)"),
        ({"tag": "Modality", "equal": "CT"}, "Extra inputs"),
        ({"tag": "Modality", "equals": True}, "valid string"),
        ({"tag": "Modality", "regex": "(unclosed"}, "is not a valid regular expression"),
        ({"tag": "SliceThickness", "range": [5, 1]}, "is empty"),
        ({"tag": "SliceThickness", "range": [None, None]}, "at least one bound"),
        ({"tag": "SliceThickness", "gt": "five"}, "valid"),
        ({"tag": "Modality", "equals": "CT", "scope": "some"}, "'first', 'any' or 'all'"),
        ({"modality": "CT"}, "exactly one of the keys"),
        ({"all": []}, "at least 1 item"),
        ({"instances": {}}, "a count needs min, max or equals"),
        ({"instances": {"min": 5, "max": 2}}, "min 5 is above max 2"),
        ({"time": {"between": ["25:00", "07:00"]}}, "is not a time of day"),
        ({"time": {"days": ["monday"]}}, "'mon'"),
    ],
)
def test_invalid_conditions_are_refused_with_a_reason(condition: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        CONDITION.validate_python(condition)
    assert fragment in str(info.value)


@pytest.mark.parametrize("op", ["gt", "ge", "lt", "le"])
@pytest.mark.parametrize("scope", ["any", "all"])
@pytest.mark.parametrize("limit", [-5, 0, 40, 300, 301, 1000])
def test_numeric_scopes_over_multi_valued_and_text_values(op: str, scope: str, limit: float) -> None:
    """The fast path (bounds over all instances) agrees with testing every instance one by one."""
    series = (
        dataset(WindowCenter=[40, 300]),
        dataset(WindowCenter=[-5, 0]),
        dataset(WindowCenter="40"),
        dataset(WindowCenter=None),
    )
    condition = {"tag": "WindowCenter", op: limit, "scope": scope}
    view = SeriesView("1.2.3", "1.2.3.4", (), series)
    model = CONDITION.validate_python(condition)
    fast = evaluate(model, EvalContext(view))[0]
    one_by_one = [model.matcher(model.path.read(ds)) for ds in series]
    assert fast == (any(one_by_one) if scope == "any" else all(one_by_one))
    assert fast == evaluate(model, EvalContext(view), explain=True)[0]
    # without the instance that lacks the attribute, "all" can hold
    view = SeriesView("1.2.3", "1.2.3.4", (), series[:3])
    expected = [model.matcher(model.path.read(ds)) for ds in series[:3]]
    assert evaluate(model, EvalContext(view))[0] == (any(expected) if scope == "any" else all(expected))
