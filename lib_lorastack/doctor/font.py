"""A tiny 5×7 bitmap font (upper case, digits, punctuation) for labelling the heatmap without an imaging library.

Lower-case letters are drawn as upper case; characters without a glyph are drawn as ``?``.
"""

from __future__ import annotations

import os

import torch

WIDTH, HEIGHT = 5, 7
ADVANCE = WIDTH + 1  # one column of space between characters

# Each glyph: 7 rows of 5 columns, '#' = ink.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": (".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."),
    " ": (".....",) * 7,
    ".": (".....", ".....", ".....", ".....", ".....", ".##..", ".##.."),
    ",": (".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."),
    ":": (".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."),
    ";": (".....", ".##..", ".##..", ".....", ".##..", "..#..", ".#..."),
    "-": (".....", ".....", ".....", "#####", ".....", ".....", "....."),
    "+": (".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."),
    "_": (".....", ".....", ".....", ".....", ".....", ".....", "#####"),
    "=": (".....", ".....", "#####", ".....", "#####", ".....", "....."),
    "/": ("....#", "....#", "...#.", "..#..", ".#...", "#....", "#...."),
    "|": ("..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "(": ("...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."),
    ")": (".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."),
    "[": (".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."),
    "]": (".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."),
    "<": ("...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."),
    ">": (".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."),
    "%": ("##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"),
    "*": (".....", "#.#.#", ".###.", "#####", ".###.", "#.#.#", "....."),
    "#": (".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."),
    "'": ("..#..", "..#..", ".#...", ".....", ".....", ".....", "....."),
    "!": ("..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."),
    "?": (".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."),
    "~": (".....", ".....", ".#...", "#.#.#", "...#.", ".....", "....."),
    "^": ("..#..", ".#.#.", "#...#", ".....", ".....", ".....", "....."),
}

_SUBSTITUTES = {"×": "X", "–": "-", "—": "-", "‖": "|", "Σ": "E", "ρ": "P", "≥": ">", "≤": "<", "·": "."}


def _bitmap(ch: str) -> torch.Tensor:
    ch = _SUBSTITUTES.get(ch, ch).upper()
    rows = _GLYPHS.get(ch, _GLYPHS["?"])
    return torch.tensor([[c == "#" for c in row] for row in rows], dtype=torch.bool)


_CACHE: dict[str, torch.Tensor] = {}


def glyph(ch: str) -> torch.Tensor:
    """The ink mask ``[7, 5]`` (bool) of one character."""
    if ch not in _CACHE:
        _CACHE[ch] = _bitmap(ch)
    return _CACHE[ch]


def text_width(text: str, scale: int = 1) -> int:
    return max(0, len(text) * ADVANCE - 1) * scale


def draw_text(
    image: torch.Tensor, x: int, y: int, text: str, color: tuple[int, int, int], scale: int = 1
) -> None:
    """Draw ``text`` into ``image`` (uint8 ``[H, W, 3]``) with its top-left corner at (x, y); clipped at the edges."""
    height, width = image.shape[0], image.shape[1]
    ink = torch.tensor(color, dtype=torch.uint8)
    for i, ch in enumerate(text):
        mask = glyph(ch)
        if scale > 1:
            mask = mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        gx = x + i * ADVANCE * scale
        x0, y0 = max(gx, 0), max(y, 0)
        x1, y1 = min(gx + mask.shape[1], width), min(y + mask.shape[0], height)
        if x0 >= x1 or y0 >= y1:
            continue
        sub = mask[y0 - y : y1 - y, x0 - gx : x1 - gx]
        image[y0:y1, x0:x1][sub] = ink


# --------------------------------------------------------------------- a real font, when Pillow is there
class BitmapFont:
    """The built-in 5×7 font behind the interface the heatmap draws with."""

    name = "bitmap 5x7"
    height = HEIGHT

    def width(self, text: str, scale: int = 1) -> int:
        return text_width(text, scale)

    def draw(self, image: torch.Tensor, x: int, y: int, text: str, color: tuple[int, int, int], scale: int = 1) -> None:
        draw_text(image, x, y, text, color, scale)


class TrueTypeFont:
    """A TrueType font drawn through Pillow (anti-aliased, blended into the picture). ``pixels``: the cap height
    the heatmap lays out with."""

    def __init__(self, image_font_module, path: str, pixels: int = 10) -> None:
        self._module = image_font_module
        self.path = path
        self.name = os.path.basename(path)
        self.height = pixels
        self._fonts: dict[int, object] = {}

    def _font(self, scale: int):
        if scale not in self._fonts:
            self._fonts[scale] = self._module.truetype(self.path, round(self.height * 1.3 * scale))
        return self._fonts[scale]

    def width(self, text: str, scale: int = 1) -> int:
        if not text:
            return 0
        left, _top, right, _bottom = self._font(scale).getbbox(text)
        return int(right - min(left, 0))

    def draw(self, image: torch.Tensor, x: int, y: int, text: str, color: tuple[int, int, int], scale: int = 1) -> None:
        from PIL import Image, ImageDraw

        if not text:
            return
        font = self._font(scale)
        w, h = self.width(text, scale) + 2, round(self.height * 1.6 * scale) + 2
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
        alpha = torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).reshape(h, w).float() / 255
        y -= round(0.25 * self.height * scale)  # the layout's y is the cap's top; the font's box starts above it
        height, width = image.shape[0], image.shape[1]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x0 >= x1 or y0 >= y1:
            return
        a = alpha[y0 - y : y1 - y, x0 - x : x1 - x].unsqueeze(-1)
        region = image[y0:y1, x0:x1].float()
        ink = torch.tensor(color, dtype=torch.float32)
        image[y0:y1, x0:x1] = (region * (1 - a) + ink * a).round().clamp(0, 255).to(torch.uint8)


def _font_files() -> list[str]:
    """DejaVu Sans where a WebUI has it: the system's fonts, then matplotlib's copy (found without importing it)."""
    import importlib.util

    paths = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        paths.append(os.path.join(os.path.dirname(spec.origin), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf"))
    return [p for p in paths if os.path.isfile(p)]


def best_font() -> BitmapFont | TrueTypeFont:
    """A real font through Pillow when both are there (the WebUI always has Pillow), else the bitmap font."""
    try:
        from PIL import ImageFont
    except ImportError:
        return BitmapFont()
    for path in _font_files():
        try:
            font = TrueTypeFont(ImageFont, path)
            font.width("X")
            return font
        except (OSError, AttributeError):  # an unreadable file, or a Pillow too old for getbbox
            continue
    return BitmapFont()
