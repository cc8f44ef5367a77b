"""Task evaluation figures: PNGs, the same bytes for the same input, and drawable for the edge cases reports meet."""
from io import BytesIO

from PIL import Image

from workers import task_charts

ROWS = [{"student": {"model": name, "version": 1}, "size": size, "f1_relative_to_teacher": value}
        for name, values in (("llama-1b", (0.29, 0.78, 0.90)), ("llama-3b", (0.58, 0.89, 0.95)))
        for size, value in zip((5000, 10000, 25000), values)]


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(BytesIO(png)).size


def test_confusion_matrices_are_deterministic_pngs_with_or_without_a_reference():
    labels = ["card", "interest", "warm"]
    matrix = [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    both = task_charts.confusion_matrices(labels, matrix, [[3, 0, 0], [0, 3, 0], [0, 0, 2]])
    assert both.startswith(b"\x89PNG") and both == task_charts.confusion_matrices(labels, matrix,
                                                                                   [[3, 0, 0], [0, 3, 0],
                                                                                    [0, 0, 2]])
    alone = task_charts.confusion_matrices(labels, matrix)
    assert alone.startswith(b"\x89PNG") and alone != both


def test_many_labels_are_cut_to_a_readable_matrix():
    labels = [f"label-{index}" for index in range(40)]
    matrix = [[int(row == column) for column in range(40)] for row in range(40)]
    width, height = _size(task_charts.confusion_matrices(labels, matrix))
    assert width == round(task_charts.WIDTH_IN * task_charts.DPI) and height <= 6 * task_charts.DPI


def test_f1_by_size_draws_each_student_and_an_empty_table():
    png = task_charts.f1_by_size(ROWS, f1_relative_min=0.9)
    assert png.startswith(b"\x89PNG") and png == task_charts.f1_by_size(ROWS, f1_relative_min=0.9)
    assert task_charts.f1_by_size([]).startswith(b"\x89PNG")
