"""Labelled image grids: rows of images with a caption per row and column."""

from PIL import Image, ImageDraw, ImageFont


def labelled_grid(rows, row_labels, column_labels=None, cell=96, label_width=260, header=18):
    """Arrange ``rows`` (lists of PIL images) into one labelled image; small images are upscaled crisply."""
    columns = max(len(r) for r in rows)
    font = ImageFont.load_default()
    top = header if column_labels else 0
    width = label_width + columns * (cell + 4)
    height = top + len(rows) * (cell + 4)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(column_labels or []):
        draw.text((label_width + j * (cell + 4) + 2, 3), str(label), fill="black", font=font)
    for i, (images, label) in enumerate(zip(rows, row_labels)):
        y = top + i * (cell + 4)
        _draw_wrapped(draw, str(label), (4, y + 4), label_width - 8, font)
        for j, image in enumerate(images):
            resample = Image.NEAREST if image.width < cell else Image.BICUBIC
            canvas.paste(image.convert("RGB").resize((cell, cell), resample), (label_width + j * (cell + 4), y))
    return canvas


def _draw_wrapped(draw, text, xy, width, font):
    x, y = xy
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) > width and line:
            draw.text((x, y), line, fill="black", font=font)
            y += 12
            line = word
        else:
            line = trial
    if line:
        draw.text((x, y), line, fill="black", font=font)


def save_png(image, path, overwrite=True):
    from .._io import atomic_file

    with atomic_file(path, overwrite=overwrite) as handle:
        image.save(handle, format="PNG")
