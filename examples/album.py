"""Thumbnail every image of an album: a Map over a list known only at run time.

``list_images`` finds the album's images; ``aioflow.Map`` runs ``resize`` once per image,
four at a time, each copy reporting its bytes as it goes; ``publish_album`` gets the
thumbnails as a list in the images' order. The journal records how many images there
were, so a resume (after a crash, say) neither lists the album again nor redoes a
thumbnail that was made.

    python examples/album.py [path/to/journal.db]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import aioflow

CHUNK = 4096


@aioflow.task(provides="images")
def list_images(album_dir: str) -> list[str]:  # a plain function: it runs in a thread
    return sorted(str(p) for p in Path(album_dir).glob("*.img"))


@aioflow.task(provides="thumbnail")
async def resize(image: str, progress: aioflow.Progress) -> str:
    """Keep every eighth byte of ``image``: a thumbnail, for the purposes of a demo."""
    source = Path(image)
    data = await anyio.Path(source).read_bytes()
    progress.total = len(data)
    kept = bytearray()
    for start in range(0, len(data), CHUNK):
        kept += data[start : start + CHUNK : 8]
        progress.update(min(start + CHUNK, len(data)), bytes_done=min(start + CHUNK, len(data)))
        await anyio.sleep(0.002)
    thumb = source.with_suffix(".thumb")
    await anyio.Path(thumb).write_bytes(bytes(kept))
    return str(thumb)


@resize.revert
def remove_thumbnail(result: object) -> None:
    if isinstance(result, str):
        Path(result).unlink(missing_ok=True)


@aioflow.task(provides="index")
def publish_album(album_dir: str, thumbnails: list[str]) -> str:
    index = Path(album_dir) / "index.txt"
    index.write_text("".join(f"{Path(t).name}\n" for t in thumbnails))
    return str(index)


def make_album() -> aioflow.Linear:
    thumbs = aioflow.Map(
        "thumbs", resize, over="images", item="image", provides="thumbnails", max_parallel=4
    )
    return aioflow.Linear("album", list_images, thumbs, publish_album)


async def main(journal: str) -> None:
    with tempfile.TemporaryDirectory() as album_dir:
        for n in range(10):  # an album of ten "images" of different sizes
            (Path(album_dir) / f"photo-{n:02}.img").write_bytes(bytes(range(256)) * (16 + 8 * n))
        seen: set[str] = set()

        def show(event: aioflow.Event) -> None:
            """Print each thumbnail as its copy of ``resize`` succeeds."""
            atom = event.atom or ""
            if event.state is aioflow.AtomState.SUCCESS and atom.startswith("thumbs["):
                seen.add(atom)
                print(f"  {atom} done ({len(seen)} of 10 thumbnails)")

        async with aioflow.Engine(f"sqlite:///{journal}", listeners=[show]) as engine:
            outcome = await engine.run(make_album(), {"album_dir": album_dir})
            report = await engine.progress(outcome.flow_id)
        copies = [name for name in outcome.atoms if name.startswith("thumbs[")]
        print(f"album {outcome.status.value}: {outcome.atoms['thumbs'].result} images,")
        print(f"  {len(copies)} copies of resize, progress {report.fraction:.0%}")
        index = await anyio.Path(outcome.results["index"]).read_text()
        print(f"  index: {index.split()[:3]} ...")


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else str(Path(tempfile.mkdtemp()) / "album.db")
    anyio.run(main, path)
