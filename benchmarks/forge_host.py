"""Ours vs the host's built-in LoRA in a running Forge / Forge Neo server, through the API (issue 14's benchmark).

Not a timed test: it drives a server that is already running and prints a table. Nothing here starts or stops
a server, so the module imports without one (numpy and PIL are imported only when images are compared).

1. Generate the realistic stack once, into the host's LoRA folder (not into this repository)::

       python -m benchmarks.forge_host make-loras $FORGE_HARNESS/data/models/Lora

   Five kohya LoRAs (``bench_a_r16`` … ``bench_e_r16``, ranks 16/32/24/32/16, alpha = rank/2, fp16, seeded) on
   every attention (``to_q/k/v/out``), feed-forward (``ff.net.0.proj``, ``ff.net.2``) and projection
   (``proj_in/out``) layer of the SD1.5 UNet and every CLIP-L ``q/k/v/out_proj`` and ``mlp.fc1/fc2``: 232 modules
   each, names and shapes from the SD1.5 module table (``lib_lorastack``'s packed copy of
   ``shared/model-tables/sd15.json``), keys written by ``lib_lorastack.formats.writers.kohya_lora``. The factors'
   spread is chosen per rank so that each LoRA's delta has a spread of about 0.0015 (the random checkpoint's
   weights: 0.007–0.03), which keeps the images finite with three LoRAs stacked.

2. Start the server with the extension linked (takeover on, the default), then::

       python -m benchmarks.forge_host timing --host forge --port 7862 --log LOG --pid PIDFILE --rounds 3 --json t.json
       python -m benchmarks.forge_host memory --engine ours --switches 20 --host forge --port 7862 --log LOG --pid PIDFILE --json m.json

   ``timing`` interleaves rounds of ours and of the built-in on the same server (the built-in by setting
   ``lorastack_takeover`` false through ``/sdapi/v1/options``; the order alternates per round). A round of one
   engine is: a **plain** no-LoRA job (no change since the last round's restore: the reference), **apply** the three-LoRA stack A:1 B:0.8 C:0.6, **repeat** it, **strength** (B → 0.5), **switch**
   (C replaced by D), **restore** (a no-LoRA job after the stack). Each job's cost is its wall time minus the
   plain job's of the same round; the table gives medians over rounds, the server's CPU time (``/proc/PID/stat``)
   likewise, the server-side lines (ours: ``[LoRA Stack] … ms``; the built-in: the sum of Forge's "Moving model(s)
   has taken" lines, where its LoRA merge runs), the images' max pixel difference ours vs the built-in, and
   whether each restore is bit-identical to the plain image. ``--budget-s`` starts no round that would end past
   it (keep a server session short on a shared machine); the JSON is written after every round.

   ``memory`` (best on a fresh server, VmHWM never goes down): two plain jobs (the first loads the checkpoint; the
   second is the reference of the switches' cost), the stack, then N switches that
   replace the third LoRA by the next of C, D, E in turn; VmRSS/VmHWM of the server process before, after the
   stack, after the switches and after a no-LoRA job. ``--engine builtin`` on a server started with
   ``--disable-extra-extensions`` (the option is then not set: ``--no-toggle``) measures the built-in alone.

3. ``python -m benchmarks.forge_host table t.json [m_ours.json m_builtin.json …]`` prints the tables again.

Neo: pass ``--host neo`` (every job then also sets clip skip 1, so that images compare with Forge's). Every job is
64×64, 2 steps, Euler, seed 1, cfg 7, emphasis "No norm" (the random checkpoint turns NaN otherwise).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import statistics
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

# (file name, rank, seed). alpha = rank / 2, as kohya's default scripts write.
BENCH_LORAS = (
    ("bench_a_r16", 16, 301),
    ("bench_b_r32", 32, 302),
    ("bench_c_r24", 24, 303),
    ("bench_d_r32", 32, 304),
    ("bench_e_r16", 16, 305),
)
DELTA_STD = 0.0015
UNET_KINDS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".ff.net.0.proj", ".ff.net.2", ".proj_in", ".proj_out")
CLIP_KINDS = (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2")

A, B, C, D, E = (name for name, _, _ in BENCH_LORAS)
STACK = ((A, 1.0), (B, 0.8), (C, 0.6))
STRENGTH = ((A, 1.0), (B, 0.5), (C, 0.6))  # one LoRA's weight changes
SWITCH = ((A, 1.0), (B, 0.5), (D, 0.6))  # one LoRA replaced by another
STEPS = ("plain", "apply", "repeat", "strength", "switch", "restore")
COSTED = ("apply", "repeat", "strength", "switch", "restore")


# ----------------------------------------------------------------------------------------------- the LoRAs
def bench_targets():
    """Every attention, feed-forward and projection layer of the SD1.5 UNet and CLIP-L's attention and MLP."""
    from lib_lorastack.formats.targets import Family
    from lib_lorastack.formats.writers import targetable

    out = []
    for t in targetable(Family.SD1):
        unet = t.module.startswith("model.diffusion_model.") and t.module.endswith(UNET_KINDS)
        clip = t.module.startswith("cond_stage_model.") and t.module.endswith(CLIP_KINDS)
        if unet or clip:
            out.append(t)
    return out


def factor_std(rank: int, alpha: float) -> float:
    """The spread of up and down that gives a delta ``(alpha / rank) · up @ down`` of spread ``DELTA_STD``."""
    return (DELTA_STD * rank / (alpha * rank**0.5)) ** 0.5


def make_bench_loras(folder: str | Path) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    from lib_lorastack.formats.targets import Family
    from lib_lorastack.formats.writers import kohya_lora

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = bench_targets()
    paths = []
    for name, rank, seed in BENCH_LORAS:
        alpha = rank / 2
        sd = kohya_lora(
            Family.SD1, targets, rank=rank, alpha=alpha, seed=seed, dtype=torch.float16, std=factor_std(rank, alpha)
        )
        path = folder / f"{name}.safetensors"
        save_file(sd, str(path), metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
        paths.append(path)
        print(f"{path}: {len(targets)} modules, rank {rank}, {path.stat().st_size / 2**20:.1f} MiB", flush=True)
    return paths


# ----------------------------------------------------------------------------------------------- one server
def prompt(stack) -> str:
    return " ".join(["a cat"] + [f"<lora:{n}:{w:g}>" for n, w in stack])


@dataclass
class Job:
    label: str
    engine: str
    wall_s: float
    cpu_s: float  # the server process's user + system time over the job
    sha1: str
    rss_gib: float
    hwm_gib: float
    load1: float
    ours_ms: float | None  # our console line's time
    moving_s: float  # the sum of the host's "Moving model(s) has taken" lines
    lines: list[str] = field(default_factory=list)
    round: int = -1


class Server:
    """A running Forge / Neo server: the API, its log file and its process."""

    def __init__(self, host: str, port: int, log: str, pidfile: str, checkpoint: str | None = None) -> None:
        self.host, self.base, self.log = host, f"http://127.0.0.1:{port}", Path(log)
        self.checkpoint = checkpoint  # pinned per job: the server's saved setting may name another model
        self.pid = Path(pidfile).read_text().strip()
        self.images: dict[str, bytes] = {}

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=1200) as r:
            return json.load(r)

    def engine(self, name: str) -> None:
        self.post("/sdapi/v1/options", {"lorastack_takeover": name == "ours"})

    def mem(self) -> tuple[float, float]:
        got = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                got[line.split(":")[0]] = int(line.split()[1]) / 2**20
        return round(got["VmRSS"], 3), round(got["VmHWM"], 3)

    def anon(self) -> float:
        """Resident anonymous memory (GiB): VmRSS also counts pages of memory-mapped files (the checkpoint), which
        the kernel drops and reads back as it likes, so RssAnon is the figure that shows what a LoRA engine holds."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon"):
                return round(int(line.split()[1]) / 2**20, 3)
        return float("nan")

    def cpu(self) -> float:
        """User + system seconds of the server and its reaped children (fields 14-17 of /proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / 100.0

    def gen(self, label: str, engine: str, stack=()) -> Job:
        overrides: dict = {"emphasis": "No norm"}
        if self.host == "neo":
            overrides["CLIP_stop_at_last_layers"] = 1
        if self.checkpoint:
            overrides["sd_model_checkpoint"] = self.checkpoint
        body = {"prompt": prompt(stack), "negative_prompt": "", "steps": 2, "width": 64, "height": 64, "seed": 1,
                "sampler_name": "Euler", "scheduler": "Automatic", "cfg_scale": 7, "batch_size": 1, "n_iter": 1,
                "override_settings": overrides, "override_settings_restore_afterwards": False}  # fmt: skip
        pos = self.log.stat().st_size
        cpu0, t0 = self.cpu(), time.perf_counter()
        r = self.post("/sdapi/v1/txt2img", body)
        wall = time.perf_counter() - t0
        cpu = self.cpu() - cpu0
        time.sleep(0.2)  # the log is written by the server's own thread
        with self.log.open("rb") as f:
            f.seek(pos)
            text = f.read().decode("utf-8", "replace")
        png = base64.b64decode(r["images"][0])
        pixels = decode(png)
        rss, hwm = self.mem()
        lines = [
            ln.strip()
            for ln in text.splitlines()
            if re.search(r"LoRA Stack|LORA|\bLora\b|Moving model|Traceback|Error", ln)
        ]
        ours = [float(m) for ln in lines if ln.startswith("[LoRA Stack]") for m in re.findall(r", (\d+) ms$", ln)]
        moving = sum(float(m) for ln in lines for m in re.findall(r"Moving model\(s\) has taken ([\d.]+) seconds", ln))
        job = Job(label, engine, round(wall, 3), round(cpu, 2), hashlib.sha1(pixels).hexdigest()[:12], rss, hwm,
                  float(Path("/proc/loadavg").read_text().split()[0]), sum(ours) if ours else None, round(moving, 3), lines)  # fmt: skip
        self.images[f"{engine}:{label}"] = png
        print(f"{engine:8s} {label:22s} wall {wall:6.2f}s cpu {cpu:6.2f}s rss {rss:.2f} hwm {hwm:.2f} "
              f"load {job.load1:.1f} {job.sha1} ours {job.ours_ms} moving {job.moving_s}", flush=True)  # fmt: skip
        for ln in lines:
            print("      " + ln[:200], flush=True)
        return job


def decode(png: bytes) -> bytes:
    """The RGB pixels of a PNG (PIL only here, so that importing this module needs neither PIL nor numpy)."""
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def max_diff(png_a: bytes, png_b: bytes) -> int:
    a, b = decode(png_a), decode(png_b)
    return max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else 255


# ----------------------------------------------------------------------------------------------- phases
def engine_round(server: Server, engine: str, rnd: int, toggle: bool) -> list[Job]:
    if toggle:
        server.engine(engine)
    plan = (
        ("plain", ()),
        ("apply", STACK),
        ("repeat", STACK),
        ("strength", STRENGTH),
        ("switch", SWITCH),
        ("restore", ()),
    )
    jobs = []
    for label, stack in plan:
        jobs.append(server.gen(label, engine, stack))
        server.images[f"{engine}:{label}:{rnd}"] = server.images[f"{engine}:{label}"]
    for j in jobs:
        j.round = rnd
    return jobs


def timing(
    server: Server,
    rounds: int,
    engines: tuple[str, ...],
    toggle: bool = True,
    budget_s: float | None = None,
    save=None,
) -> dict:
    """``rounds`` rounds of every engine, the order alternating; no new round starts when the last one's time
    would take the run past ``budget_s``; ``save(result)`` after each round (a stopped run keeps its rounds)."""
    t0 = time.perf_counter()
    server.gen("warmup", engines[0])
    jobs: list[Job] = []
    result: dict = {"kind": "timing", "host": server.host, "jobs": [], "images": {}}
    for rnd in range(rounds):
        r0 = time.perf_counter()
        order = engines if rnd % 2 == 0 else tuple(reversed(engines))
        for engine in order:
            jobs += engine_round(server, engine, rnd, toggle)
        result = {"kind": "timing", "host": server.host, "jobs": [asdict(j) for j in jobs],
                  "images": compare_images(server, rnd + 1, engines)}  # fmt: skip
        if save is not None:
            save(result)
        now = time.perf_counter()
        if budget_s is not None and rnd + 1 < rounds and (now - t0) + (now - r0) > budget_s:
            print(f"budget of {budget_s:.0f} s: stopping after {rnd + 1} round(s)", flush=True)
            break
    if toggle and "ours" in engines:
        server.engine("ours")  # the setting persists in the server's config: leave the takeover on, its default
    return result


def compare_images(server: Server, rounds: int, engines: tuple[str, ...]) -> dict:
    im = server.images
    out: dict = {}
    for rnd in range(rounds):
        if len(engines) == 2:
            for label in ("apply", "strength", "switch"):
                out.setdefault(f"{label}: ours vs builtin max diff", []).append(
                    max_diff(im[f"ours:{label}:{rnd}"], im[f"builtin:{label}:{rnd}"])
                )
        for engine in engines:
            same = max_diff(im[f"{engine}:restore:{rnd}"], im[f"{engine}:plain:{rnd}"]) == 0
            out.setdefault(f"{engine} restore == plain (bit-identical)", []).append(same)
        if len(engines) == 2:
            out.setdefault("plain: ours vs builtin max diff", []).append(
                max_diff(im[f"ours:plain:{rnd}"], im[f"builtin:plain:{rnd}"])
            )
        out.setdefault(f"apply: {engines[0]} vs base max diff", []).append(
            max_diff(im[f"{engines[0]}:apply:{rnd}"], im[f"{engines[0]}:plain:{rnd}"])
        )
    return out


def memory(server: Server, engine: str, switches: int, toggle: bool = True) -> dict:
    if toggle:
        server.engine(engine)
    jobs = [server.gen("load", engine), server.gen("plain", engine)]  # the first job loads the checkpoint
    anon = {"plain": server.anon()}
    start = server.mem()
    jobs.append(server.gen("stack", engine, STACK))
    stacked, anon["stack"] = server.mem(), server.anon()
    third = (C, D, E)
    for i in range(switches):
        jobs.append(server.gen(f"switch {i + 1}", engine, ((A, 1.0), (B, 0.8), (third[(i + 1) % 3], 0.6))))
    switched, anon["after switches"] = server.mem(), server.anon()
    jobs.append(server.gen("restore", engine))
    restored, anon["after restore"] = server.mem(), server.anon()
    if toggle and engine != "ours":
        server.engine("ours")  # the setting persists in the server's config: leave the takeover on, its default
    return {"kind": "memory", "host": server.host, "engine": engine, "switches": switches,
            "mem": {"plain": start, "stack": stacked, "after switches": switched, "after restore": restored},
            "anon": anon, "jobs": [asdict(j) for j in jobs]}  # fmt: skip


# ----------------------------------------------------------------------------------------------- tables
def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(result: dict) -> dict:
    """Per engine and step: medians over rounds of the wall and CPU time minus the round's plain job, and of the
    server-side figures."""
    jobs = result["jobs"]
    out: dict = {}
    for engine in sorted({j["engine"] for j in jobs if j["round"] >= 0}):
        plain = {j["round"]: j for j in jobs if j["engine"] == engine and j["label"] == "plain"}
        rows = {"plain": {"wall_s": median([p["wall_s"] for p in plain.values()]),
                          "cpu_s": median([p["cpu_s"] for p in plain.values()])}}  # fmt: skip
        for step in COSTED:
            mine = [j for j in jobs if j["engine"] == engine and j["label"] == step and j["round"] in plain]
            rows[step] = {
                "wall_s": median([j["wall_s"] - plain[j["round"]]["wall_s"] for j in mine]),
                "cpu_s": median([j["cpu_s"] - plain[j["round"]]["cpu_s"] for j in mine]),
                "ours_ms": median([j["ours_ms"] or 0.0 for j in mine]) if engine == "ours" else None,
                "moving_s": median([j["moving_s"] for j in mine]),
                "n": len(mine),
            }
        out[engine] = rows
    return out


def _f(x, fmt="{:+.2f}"):
    return "–" if x is None else fmt.format(x)


def timing_table(result: dict) -> str:
    s = summarize(result)
    ours, built = s.get("ours"), s.get("builtin")
    lines = [f"{result['host']}: median over {s[next(iter(s))]['apply']['n']} rounds; cost = job − plain job of the round",
             "| step | ours wall | built-in wall | built-in ÷ ours | ours CPU | built-in CPU | built-in ÷ ours | ours `[LoRA Stack]` | "
             "ours moving | built-in moving |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for step in ("plain", *COSTED):
        o, b = (ours or {}).get(step, {}), (built or {}).get(step, {})
        ratio = None
        if (o.get("wall_s") or 0) > 0.02 and (b.get("wall_s") or 0) > 0.02:
            ratio = b["wall_s"] / o["wall_s"]
        cpu_ratio = None
        if (o.get("cpu_s") or 0) > 0.02 and (b.get("cpu_s") or 0) > 0.02:
            cpu_ratio = b["cpu_s"] / o["cpu_s"]
        fmt = "{:.2f} s" if step == "plain" else "{:+.2f} s"
        lines.append(f"| {step} | {_f(o.get('wall_s'), fmt)} | {_f(b.get('wall_s'), fmt)} | {_f(ratio, '{:.1f}×')} | "
                     f"{_f(o.get('cpu_s'), fmt)} | {_f(b.get('cpu_s'), fmt)} | {_f(cpu_ratio, '{:.1f}×')} | {_f(o.get('ours_ms'), '{:.0f} ms')} | "
                     f"{_f(o.get('moving_s'), '{:.2f} s')} | {_f(b.get('moving_s'), '{:.2f} s')} |")  # fmt: skip
    for k, v in result.get("images", {}).items():
        lines.append(f"- {k}: {v}")
    loads = [j["load1"] for j in result["jobs"]]
    lines.append(
        f"- load average (1 min) during the jobs: median {median(loads):.1f}, {min(loads):.1f}–{max(loads):.1f}"
    )
    return "\n".join(lines)


def memory_table(results: list[dict]) -> str:
    lines = ["| host, engine | plain RSS | stack RSS | after N switches RSS / HWM | after restore RSS | RssAnon plain / stack / "
             "switches / restore | switch cost median |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        m = r["mem"]
        a = r.get("anon")
        anon = " / ".join(f"{a[k]:.2f}" for k in ("plain", "stack", "after switches", "after restore")) if a else "–"
        switches = [j for j in r["jobs"] if j["label"].startswith("switch")]
        plain = next(j for j in r["jobs"] if j["label"] == "plain")
        server_side = median([j["ours_ms"] for j in switches]) if r["engine"] == "ours" else None
        moving = median([j["moving_s"] for j in switches])
        extra = f"{server_side:.0f} ms ours" if server_side is not None else f"{moving:.2f} s moving"
        lines.append(f"| {r['host']}, {r['engine']} ({r['switches']} switches) | {m['plain'][0]:.2f} GiB | {m['stack'][0]:.2f} | "
                     f"{m['after switches'][0]:.2f} / {m['after switches'][1]:.2f} | {m['after restore'][0]:.2f} | {anon} | "
                     f"wall {median([j['wall_s'] for j in switches]) - plain['wall_s']:+.2f} s, "
                     f"CPU {median([j['cpu_s'] for j in switches]) - plain['cpu_s']:+.2f} s ({extra}) |")  # fmt: skip
    return "\n".join(lines)


def merge_timings(results: list[dict]) -> list[dict]:
    """One timing result per host: the rounds of several runs (several servers) one after another."""
    by_host: dict[str, dict] = {}
    for r in results:
        if r["kind"] != "timing":
            continue
        into = by_host.setdefault(r["host"], {"kind": "timing", "host": r["host"], "jobs": [], "images": {}})
        offset = 1 + max((j["round"] for j in into["jobs"]), default=-1)
        into["jobs"] += [{**j, "round": j["round"] + offset if j["round"] >= 0 else -1} for j in r["jobs"]]
        for k, v in r.get("images", {}).items():
            into["images"].setdefault(k, []).extend(v)
    return list(by_host.values())


def show(results: list[dict]) -> str:
    parts = [timing_table(r) for r in merge_timings(results)]
    mem = [r for r in results if r["kind"] == "memory"]
    if mem:
        parts.append(memory_table(mem))
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.forge_host", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-loras", help="write the five benchmark LoRAs into a folder")
    mk.add_argument("folder")
    for name in ("timing", "memory"):
        p = sub.add_parser(name)
        p.add_argument("--host", choices=("forge", "neo"), required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--log", required=True, help="the server's log file (its console)")
        p.add_argument("--pid", required=True, help="the server's PID file")
        p.add_argument("--checkpoint", help="the model every job runs on (override_settings sd_model_checkpoint)")
        p.add_argument("--json", help="write every job's figures here")
        p.add_argument("--images", help="write the images (base64 PNG by engine:step:round, JSON) here")
        p.add_argument("--no-toggle", action="store_true", help="do not set lorastack_takeover (extension not loaded)")
        if name == "timing":
            p.add_argument("--rounds", type=int, default=3)
            p.add_argument("--engines", default="ours,builtin")
            p.add_argument("--budget-s", type=float, help="start no round that would end past this many seconds")
        else:
            p.add_argument("--engine", choices=("ours", "builtin"), required=True)
            p.add_argument("--switches", type=int, default=20)
    tb = sub.add_parser("table", help="print the tables of saved --json files")
    tb.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "make-loras":
        make_bench_loras(args.folder)
        return 0
    if args.cmd == "table":
        print(show([json.loads(Path(f).read_text()) for f in args.files]))
        return 0
    server = Server(args.host, args.port, args.log, args.pid, args.checkpoint)

    def save(result: dict) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        if args.images:
            Path(args.images).write_text(
                json.dumps({k: base64.b64encode(v).decode() for k, v in server.images.items()})
            )

    if args.cmd == "timing":
        engines = tuple(args.engines.split(","))
        result = timing(server, args.rounds, engines, toggle=not args.no_toggle, budget_s=args.budget_s, save=save)
    else:
        result = memory(server, args.engine, args.switches, toggle=not args.no_toggle)
    save(result)
    print(show([result]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
