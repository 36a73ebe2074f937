"""``make screenshots``: the README's pictures of the playground, taken on the embedded model with the starter bank.

Starts a real server (``python -m app.server``) on a copy of the committed bank (the Train panel saves a vector:
the copy keeps the repository's ``vectors/`` untouched), drives each panel in Debian's Chromium with Playwright as a
user would, and writes ``docs/img/playground-{steer,analogies,vectors,train}.png``. A few minutes on 2 cores.

    .venv/bin/python benchmarks/playground_screenshots.py [--out docs/img] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright
from servers import ROOT, start_server, stop_server

BANK = ROOT / "vectors" / "smollm2-135m-instruct"
# Adjective → adverb: a relation the starter bank does not ship, so the Train panel makes something new.
ADVERB_PAIRS = """input,output
quick,quickly
slow,slowly
happy,happily
sad,sadly
loud,loudly
quiet,quietly
careful,carefully
easy,easily
bad,badly
kind,kindly
brave,bravely
calm,calmly
rare,rarely
soft,softly
warm,warmly
bright,brightly
proud,proudly
honest,honestly
polite,politely
sudden,suddenly
"""


def start(workdir: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    vectors = workdir / "vectors" / BANK.name
    shutil.copytree(BANK, vectors)
    return start_server(workdir, {"FVSTEER_ADMIN_TOKEN": token, "FVSTEER_VECTORS_DIR": str(workdir / "vectors")})


def steer(page: Page, out: Path) -> None:
    page.fill("#prompt", "Q: hot\nA:")
    page.fill("#vector-filter", "")
    page.locator('#sliders input[data-name="antonym"]').fill("1")
    page.fill("#max-new-tokens", "8")
    page.click("#run")
    expect(page.locator("#steer-state")).to_have_text("done", timeout=120_000)
    page.click('#snippet-tabs [data-lang="openai"]')
    page.screenshot(path=out / "playground-steer.png", full_page=True)
    print("steer:", repr(page.locator("#steered-text").inner_text()), "baseline:",
          repr(page.locator("#baseline-text").inner_text()))


def analogies(page: Page, out: Path) -> None:
    page.click("#tab-analogies")
    page.fill("#analogy-a", "hot")
    page.fill("#analogy-b", "cold")
    page.fill("#analogy-c", "up")
    page.fill("#analogy-choices", "down, above, high")
    page.click("#solve")
    expect(page.locator("#analogy-result")).to_be_visible(timeout=120_000)
    page.screenshot(path=out / "playground-analogies.png", full_page=True)
    print("analogy answer:", page.locator("#analogy-answer").inner_text())


def vectors(page: Page, out: Path) -> None:
    page.click("#tab-vectors")
    page.click('#vector-table button[data-name="antonym"]')
    expect(page.locator("#lens-tokens li")).to_have_count(10, timeout=120_000)
    page.screenshot(path=out / "playground-vectors.png", full_page=True)


def train(page: Page, out: Path) -> None:
    page.click("#tab-train")
    page.fill("#train-name", "adverb")
    page.fill("#train-pairs", ADVERB_PAIRS)
    page.fill("#train-epochs", "40")
    page.click("#train-start")
    expect(page.locator("#train-result")).to_be_visible(timeout=900_000)
    page.screenshot(path=out / "playground-train.png", full_page=True)
    print("train:", page.locator("#train-summary").inner_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fvsteer-shots-") as tmp:
        process, url = start(Path(tmp), secrets.token_hex(16))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(f"{url}/playground")
                expect(page.locator("#sliders li")).not_to_have_count(0, timeout=60_000)
                for shoot in (steer, analogies, vectors, train):  # the page opens on Steer
                    shoot(page, args.out)
                browser.close()
                if errors:
                    raise SystemExit(f"JavaScript errors: {errors}")
        finally:
            stop_server(process)
    print(f"wrote {args.out}/playground-*.png")


if __name__ == "__main__":
    main()
