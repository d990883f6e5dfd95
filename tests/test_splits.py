"""Seeded splits and per-class counts shared by the data sources."""

from dltool.data import splits


def test_stratified_split_is_seeded_and_per_label():
    pairs = [(f"x{i}", i % 2) for i in range(20)]
    train, held_out = splits.stratified_split(pairs, 0.2, seed=3)
    assert sorted(train + held_out) == sorted(pairs)
    assert splits.count_labels((y for _, y in held_out), 2) == [2, 2]
    assert splits.stratified_split(pairs, 0.2, seed=3) == (train, held_out)


def test_grouped_split_keeps_groups_together():
    items = [(f"s{i // 3}", f"t{i}") for i in range(300)]  # 100 groups of 3
    parts = splits.grouped_split(items, key=lambda item: item[0],
                                 fractions={"val": 0.1, "test": 0.2}, seed=7)
    assert {name: len(part) for name, part in parts.items()} == {
        "train": 210, "val": 30, "test": 60}
    groups = {name: {s for s, _ in part} for name, part in parts.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    assert parts == splits.grouped_split(items, lambda item: item[0],
                                         {"val": 0.1, "test": 0.2}, seed=7)
    assert parts != splits.grouped_split(items, lambda item: item[0],
                                         {"val": 0.1, "test": 0.2}, seed=8)
    tiny = splits.grouped_split([("a", 1), ("b", 2)], lambda item: item[0],
                                {"val": 0.01, "test": 0.01}, seed=0)
    assert len(tiny["train"]) == 1  # train keeps a group


def test_count_table():
    lines = splits.count_table(["cat", "dog"], {"train": [3, 4], "test": [1, 0]})
    assert lines[0].split() == ["class", "train", "test"]
    assert lines[-1].split() == ["total", "7", "1"]
