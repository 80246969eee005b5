"""Films drawn into files: tiles, densities, polarity, trim, the PNG and the PDF; job folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PdfParser

from pacsd.dicom.print_image import PresentationLut, PrintImage
from pacsd.dicom.print_jobs import open_job, read_jobs
from pacsd.dicom.print_layout import DisplayFormat, image_boxes, page_mm
from pacsd.dicom.print_render import (
    BoxImage,
    DensityRange,
    FilmPage,
    render_film,
    save_pdf,
    save_png,
)

DENSITIES = DensityRange(0, 300)


def page(layout: str = "STANDARD", counts: tuple[int, ...] = (2, 2), **values: object) -> FilmPage:
    dpi = 50
    rects = image_boxes(DisplayFormat(layout, counts), page_mm("8INX10IN", "PORTRAIT"))
    fields: dict[str, object] = {
        "size": (400, 500),
        "dpi": dpi,
        "boxes": [rect.pixels(dpi) for rect in rects],
        "color": False,
        "border": 0.0,
        "empty": 0.0,
        "trim": False,
        **values,
    }
    return FilmPage(**fields)  # type: ignore[arg-type]


def uniform(value: int, polarity: str = "NORMAL", **values: object) -> BoxImage:
    image = PrintImage(np.full((32, 32), value, np.uint8), 8, False)
    fields: dict[str, object] = {
        "image": image,
        "polarity": polarity,
        "magnification_type": "BILINEAR",
        "min_density": 0,
        "max_density": 300,
        "requested_width": None,
        "behaviour": "",
        "lut": None,
        **values,
    }
    return BoxImage(**fields)  # type: ignore[arg-type]


def tile_means(film: Image.Image, film_page: FilmPage) -> list[float]:
    pixels = np.asarray(film, dtype=np.float64)
    means = []
    for left, top, width, height in film_page.boxes:
        side = min(width, height) // 2  # the image's centre, away from the border
        x, y = left + width // 2, top + height // 2
        means.append(
            float(pixels[y - side // 2 : y + side // 2, x - side // 2 : x + side // 2].mean())
        )
    return means


def test_four_tiles_show_their_images() -> None:
    """STANDARD\\2,2: each box shows its image's gray, positions by rows."""
    film_page = page()
    film, statuses = render_film(
        film_page, [uniform(0), uniform(85), uniform(170), uniform(255)], DENSITIES
    )
    assert film.size == (400, 500)
    assert film.mode == "L"
    assert tile_means(film, film_page) == pytest.approx([0, 85, 170, 255], abs=1)
    assert statuses == [0, 0, 0, 0]


def test_polarity_reverse_and_presentation_lut() -> None:
    """REVERSE turns the image over; an INVERSE Presentation LUT turns it back."""
    film_page = page()
    contents = [
        uniform(60, "REVERSE"),
        uniform(60, "REVERSE", lut=PresentationLut("INVERSE")),
        uniform(60),
        None,
    ]
    film, _ = render_film(film_page, contents, DENSITIES)
    assert tile_means(film, film_page) == pytest.approx([195, 60, 60, 0], abs=1)


def test_densities_bound_the_image() -> None:
    """Min / Max Density 150..300 of a printer 0..300: white prints at half gray."""
    film_page = page()
    contents = [uniform(255, min_density=150), uniform(0, max_density=150), None, None]
    film, _ = render_film(film_page, contents, DENSITIES)
    assert tile_means(film, film_page)[:2] == pytest.approx([127.5, 127.5], abs=1)


def test_border_and_empty_image_density() -> None:
    """Border WHITE, Empty Image Density 150 of 0..300: a white page with gray empty boxes."""
    film_page = page(border=DENSITIES.named("WHITE"), empty=DENSITIES.named("150"))
    film, _ = render_film(film_page, [None] * 4, DENSITIES)
    pixels = np.asarray(film)
    assert pixels[0, 0] == 255
    assert tile_means(film, film_page) == pytest.approx([128] * 4, abs=1)


def test_trim_draws_a_line_about_each_image() -> None:
    """Trim YES: a white line about the image on a black border."""
    film_page = page("STANDARD", (1, 1), trim=True)
    film, _ = render_film(film_page, [uniform(100)], DENSITIES)
    left, top, width, height = film_page.boxes[0]
    pixels = np.asarray(film)
    column = pixels[:, left + width // 2]
    assert 255 in column.tolist()
    assert pixels[top + height // 2, left + width // 2] == 100


def test_color_film() -> None:
    """A color film is RGB; a REVERSE color image is its complement."""
    film_page = page("STANDARD", (2, 1), color=True)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    image = PrintImage(red, 8, True)
    contents = [uniform(0, image=image), uniform(0, "REVERSE", image=image)]
    film, _ = render_film(film_page, contents, DENSITIES)
    assert film.mode == "RGB"
    pixels = np.asarray(film)
    for (left, top, width, height), expected in zip(
        film_page.boxes, ([255, 0, 0], [0, 255, 255]), strict=True
    ):
        assert pixels[top + height // 2, left + width // 2].tolist() == expected


def test_png_and_pdf(tmp_path: Path) -> None:
    """PNGs keep their resolution; the PDF has one page per film, each at its film size."""
    film_page = page()
    film, _ = render_film(film_page, [uniform(10)] * 4, DENSITIES)
    first, second = tmp_path / "film-0001.png", tmp_path / "film-0002.png"
    save_png(film, first, 50)
    save_png(film.resize((800, 1000)), second, 100)
    save_pdf([(first, 50), (second, 100)], tmp_path / "session.pdf", "test")
    with Image.open(first) as reopened:
        assert reopened.info["dpi"] == pytest.approx((50, 50), abs=0.1)
    with PdfParser.PdfParser(str(tmp_path / "session.pdf")) as pdf:
        assert len(pdf.pages) == 2
        boxes = [list(pdf.read_indirect(reference)[b"MediaBox"]) for reference in pdf.pages]
    assert boxes == [[0, 0, 576, 720], [0, 0, 576, 720]]  # 8 x 10 in at 72 points per inch
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "film-0001.png",
        "film-0002.png",
        "session.pdf",
    ]


def test_job_folders_and_records(tmp_path: Path) -> None:
    """One folder per film session and day; a reused UID gets a suffix; records list back."""
    first = open_job(tmp_path, "1.2.3", {"film_session_uid": "1.2.3"})
    second = open_job(tmp_path, "1.2.3", {"film_session_uid": "1.2.3"})
    assert first.folder.name == "1.2.3"
    assert second.folder.name == "1.2.3-2"
    assert first.folder.parent == second.folder.parent
    first.films.append({"file": "film-0001.png"})
    first.save()
    second.save()
    records = list(read_jobs(tmp_path))
    assert len(records) == 2
    assert json.loads((first.folder / "job.json").read_text())["films"] == [
        {"file": "film-0001.png"}
    ]
    with pytest.raises(ValueError, match="not a UID"):
        open_job(tmp_path, "../etc", {})
