import pytest
from herdbook.feedback.tables import diff_train_tables, from_csv, safe_cell, to_csv


@pytest.mark.parametrize("text", ['=HYPERLINK("x")', "+1+1", "-2+3", "@SUM(A1)", "\tx"])
def test_formula_like_text_is_neutralised_and_reads_back(text):
    assert safe_cell(text).startswith("'")
    assert from_csv(to_csv(["prompt"], [{"prompt": text}])) == [{"prompt": text}]


def test_plain_text_and_numbers_are_untouched():
    assert safe_cell("an ox") == "an ox"
    assert safe_cell(-0.5) == "-0.5"
    assert safe_cell(True) == "true"


def row(path, rating="good", accepts=1, rejects=0, selected="true"):
    return {"path": path, "rating": rating, "accepts": str(accepts), "rejects": str(rejects), "selected": selected}


def test_diff_finds_added_removed_and_changed():
    old = [row("a"), row("b"), row("c", selected="false")]
    new = [row("a"), row("c", "bad", 0, 1, "false"), row("d")]
    diff = diff_train_tables(old, new)
    assert [r["path"] for r in diff.added] == ["d"]
    assert [r["path"] for r in diff.removed] == ["b"]
    assert [b["path"] for _, b in diff.rating_changed] == ["c"]
    assert [r["path"] for r in diff.selected_added] == ["d"]
    assert [r["path"] for r in diff.selected_removed] == ["b"]
    assert diff_train_tables(new, new).empty


def test_changes_read_by_candidate_not_by_hash_path():
    old = [row("a"), row("c", selected="false")]
    new = [row("c", "bad", 0, 1, "false"), {**row("d"), "candidate_id": "7", "source_name": "ox-7.png"}]
    changes = diff_train_tables(old, new).changes()
    by_what = {c["change"]: c for c in changes}
    assert by_what["added"]["candidate_id"] == 7 and by_what["added"]["source_name"] == "ox-7.png"
    assert by_what["rating changed"]["before"].startswith("good (") and by_what["rating changed"]["after"] == (
        "bad (0 accept, 1 reject)"
    )
    assert {c["change"] for c in changes} == {
        "added", "removed", "rating changed", "entered the selection", "left the selection"
    }  # fmt: skip
