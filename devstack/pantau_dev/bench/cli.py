"""`pantau bench ...`: benchmarks on the real local stack, each against a baseline of the same run."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from pantau_dev.procs import StackError
from pantau_dev.settings import DevSettings
from pantau_dev.stack import DevStack

if TYPE_CHECKING:
    from pantau.triton.builder import BuildOptions

bench_app = typer.Typer(
    add_completion=False, help="Benchmarks on the real local stack.", no_args_is_help=True
)
console = Console(stderr=True)
# Options every benchmark shares.
ModelOption = Annotated[Path | None, typer.Option(help="YOLOX ONNX export; default: the shared one.")]
FootageOption = Annotated[Path | None, typer.Option(help="Video clip; default: the shared vtest.avi.")]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the results here.")]
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Use the stack (its Triton) with this state directory, e.g. `pantau dev up`'s, instead of "
        "starting a throwaway one; its models are rebuilt and stay loaded."
    ),
]


def _emit(render: Callable[[Any, Console], None], report: Any, json_path: Path | None, width: int) -> None:
    """Print the tables (whole rows when piped into a file or README) and write the JSON."""
    out = Console() if Console().is_terminal else Console(width=width)
    render(report, out)
    if json_path is not None:
        json_path.write_text(report.to_json())
        console.print(f"wrote {json_path}")


def _concurrency(value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter("a comma-separated list of integers, e.g. 1,4,8") from exc
    if not levels or min(levels) < 1:
        raise typer.BadParameter("each level must be at least 1")
    return tuple(dict.fromkeys(levels))  # once each, in the order given


def _cpu_build(instances: int | None, threads: int | None) -> BuildOptions:
    """`pantau model build`'s cpu options, with what the command line overrides."""
    from pantau.triton.builder import BuildOptions

    options = BuildOptions(target="cpu")
    return replace(
        options,
        instances=instances or options.instances,
        intra_op_threads=options.intra_op_threads if threads is None else threads,
    )


@bench_app.command("inference")
def inference_command(
    frames: Annotated[int, typer.Option(min=1, help="Frames of the clip decoded once and cycled.")] = 64,
    seconds: Annotated[float, typer.Option(min=0.1, help="Measured seconds per row and round.")] = 2.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="Warm-up seconds per row and round.")] = 0.5,
    rounds: Annotated[int, typer.Option(min=1, help="Sweeps; each row pools its rounds.")] = 3,
    concurrency: Annotated[str, typer.Option(help="Concurrent callers per path, comma-separated.")] = "1,4,8",
    max_batch: Annotated[int, typer.Option(min=1, help="Pantau client's batch limit.")] = 8,
    wire_frames: Annotated[int, typer.Option(min=1, help="Frames sent to count bytes on the wire.")] = 16,
    instances: Annotated[
        int | None, typer.Option(min=1, help="Triton model instances; default: `model build`'s.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(min=0, help="onnxruntime threads per instance (0 = all cores); default: its."),
    ] = None,
    state_dir: StateDirOption = None,
    model: ModelOption = None,
    footage: FootageOption = None,
    json_path: JsonOption = None,
) -> None:
    """Frames/s and latency of in-process onnxruntime, Pantau's client via Triton gRPC and a naive
    HTTP client over a concurrency sweep, bytes on the wire per frame, and the goals' ratios."""
    # Imported here: `pantau operator` shares this command line and should not load them.
    from pantau_dev.bench import inference

    config = inference.BenchConfig(
        frames=frames,
        seconds=seconds,
        warmup=warmup,
        rounds=rounds,
        concurrency=_concurrency(concurrency),
        max_batch=max_batch,
        wire_frames=wire_frames,
        build=_cpu_build(instances, threads),
    )
    shared = DevSettings().shared_dir
    model_path = model or shared / "models" / "yolox_nano.onnx"
    footage_path = footage or shared / "footage" / "vtest.avi"
    for path, option in ((model_path, "--model"), (footage_path, "--footage")):
        if not path.is_file():
            raise typer.BadParameter(f"{path} is not a file", param_hint=option)

    def progress(message: str) -> None:
        console.print(f"[dim]{message}[/dim]")

    try:
        if state_dir is not None:
            stack = DevStack(DevSettings(state_dir=state_dir))
            report = inference.run(
                config, inference.Endpoints.of_stack(stack), model_path, footage_path, progress
            )
        else:
            with tempfile.TemporaryDirectory(prefix="pantau-bench-") as tmp:
                # Only Triton is used: no node, no fake nodes, no Jaeger, to keep the idle load low.
                stack = DevStack(
                    DevSettings(state_dir=Path(tmp), kwok_nodes=0, with_jaeger=False, real_node=False)
                )
                try:
                    with console.status("starting a throwaway local stack ..."):
                        stack.up()
                    endpoints = inference.Endpoints.of_stack(stack)
                    report = inference.run(config, endpoints, model_path, footage_path, progress)
                finally:
                    stack.down()
    except StackError as exc:
        console.print(f"[red]stack failed:[/red] {exc}")
        raise typer.Exit(1) from exc

    _emit(inference.render, report, json_path, width=200)


@bench_app.command("operator")
def operator_command(
    cameras: Annotated[
        int, typer.Option(min=1, help="Cameras created, spread evenly over the Sites.")
    ] = 5000,
    sites: Annotated[
        int, typer.Option(min=1, help="Sites, each with its ingest pool on the fake nodes.")
    ] = 10,
    concurrency: Annotated[int, typer.Option(min=1, help="Creates in flight (baseline and run alike).")] = 32,
    resync: Annotated[float, typer.Option(min=0.1, help="The operator's PANTAU_RESYNC_INTERVAL.")] = 5.0,
    debounce: Annotated[
        float | None, typer.Option(min=0.0, help="The operator's PANTAU_DEBOUNCE; default: its own.")
    ] = None,
    settle: Annotated[
        float | None,
        typer.Option(min=0.1, help="Quiet seconds that end the write count; default: 2 x resync + 2."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Give up converging after this many seconds.")
    ] = 600.0,
    keep_logs: Annotated[
        Path | None, typer.Option(help="Copy the operator's and the stack's logs into this directory.")
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="Record the operator with py-spy (on PATH) into this file; its top in the report."),
    ] = None,
    json_path: JsonOption = None,
) -> None:
    """Time until every Camera is assigned and every pool exists, API writes per Camera and the
    operator's peak RSS, against the raw create rate of Cameras measured in the same run."""
    from pantau_dev.bench import operator_scale

    try:
        config = operator_scale.ScaleConfig(
            cameras=cameras,
            sites=sites,
            concurrency=concurrency,
            resync_interval=resync,
            debounce=debounce,
            settle=settle,
            timeout=timeout,
            profile=str(profile.resolve()) if profile else None,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    def progress(message: str) -> None:
        console.print(f"[dim]{message}[/dim]")

    try:
        report = operator_scale.run_fresh(config, progress, keep_logs)
    except StackError as exc:
        console.print(f"[red]stack failed:[/red] {exc}")
        raise typer.Exit(1) from exc

    _emit(operator_scale.render, report, json_path, width=160)


@bench_app.command("ingest")
def ingest_command(
    cameras: Annotated[str, typer.Option(help="Pantau sessions per row, comma-separated.")] = "8,16",
    rates: Annotated[str, typer.Option(help="Sampled frames/s per camera, comma-separated.")] = "0.5,5",
    probe_fps: Annotated[
        float,
        typer.Option(min=0.0, help="One more Pantau row at this rate (keyframes only); 0 = none."),
    ] = 0.4,
    naive_cameras: Annotated[int, typer.Option(min=1, help="Sessions of the naive OpenCV loop.")] = 8,
    seconds: Annotated[float, typer.Option(min=1.0, help="Measured seconds per row.")] = 12.0,
    warmup: Annotated[
        float, typer.Option(min=0.0, help="Seconds per row once every session measured its GOP.")
    ] = 4.0,
    latency: Annotated[
        str, typer.Option(help="CAMERASxFPS of each latency run, comma-separated; the first is nominal.")
    ] = "8x2,2x1",
    latency_seconds: Annotated[float, typer.Option(min=1.0, help="Measured seconds per latency run.")] = 15.0,
    max_batch: Annotated[
        int | None, typer.Option(min=1, help="The latency runs' client batch limit; default: the pods'.")
    ] = None,
    instances: Annotated[
        int | None, typer.Option(min=1, help="Triton model instances; default: `model build`'s.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(min=0, help="onnxruntime threads per instance (0 = all cores); default: its."),
    ] = None,
    state_dir: StateDirOption = None,
    model: ModelOption = None,
    footage: FootageOption = None,
    json_path: JsonOption = None,
) -> None:
    """Cameras per core of the ingest path (1080p25 H.264, a keyframe every 2 s) against a naive OpenCV
    loop, and capture -> event latency through Triton at nominal load."""
    from pantau_dev.bench import ingest

    try:
        config = ingest.IngestConfig(
            cameras=ingest.parse_counts(cameras),
            rates=ingest.parse_rates(rates),
            probe_fps=probe_fps or None,
            naive_cameras=naive_cameras,
            seconds=seconds,
            warmup=warmup,
            latency_loads=ingest.parse_loads(latency),
            latency_seconds=latency_seconds,
            max_batch=max_batch,
            build=_cpu_build(instances, threads),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    shared = DevSettings().shared_dir
    model_path = model or shared / "models" / "yolox_nano.onnx"
    footage_path = footage or shared / "footage" / "vtest.avi"
    for path, option in ((model_path, "--model"), (footage_path, "--footage")):
        if not path.is_file():
            raise typer.BadParameter(f"{path} is not a file", param_hint=option)

    def progress(message: str) -> None:
        console.print(f"[dim]{message}[/dim]")

    try:
        report = ingest.run(
            config, footage_path, model_path, lambda: ingest.stack_endpoints(state_dir, progress), progress
        )
    except StackError as exc:
        console.print(f"[red]stack failed:[/red] {exc}")
        raise typer.Exit(1) from exc

    _emit(ingest.render, report, json_path, width=160)


@bench_app.command("scale")
def scale_command(
    cameras: Annotated[int, typer.Option(min=1, help="Cameras of the Site before the step.")] = 4,
    step: Annotated[int, typer.Option(min=1, help="Cameras added at once: the load step.")] = 20,
    fps: Annotated[float, typer.Option(min=0.1, help="Sampled frames per second per camera.")] = 0.5,
    per_pod: Annotated[int, typer.Option(min=1, help="The Site's podCapacity.cameras.")] = 8,
    latency_seconds: Annotated[float, typer.Option(min=1.0, help="Latency window after the step.")] = 20.0,
    noise_minutes: Annotated[float, typer.Option(min=1.0, help="Simulated minutes of noisy load.")] = 30.0,
    noise: Annotated[float, typer.Option(min=0.0, max=0.9, help="Load noise, +/- this fraction.")] = 0.15,
    timeout: Annotated[float, typer.Option(min=10.0, help="Longest wait for a phase, seconds.")] = 240.0,
    footage: FootageOption = None,
    json_path: JsonOption = None,
) -> None:
    """Step response, moves, flaps and latency of Pantau's pool scaling against a naive policy, on a
    throwaway local stack with its node (Pantau installed with its chart)."""
    from pantau_dev.bench import scale
    from pantau_dev.demo.run import load_detector

    config = scale.ScaleConfig(
        cameras=cameras,
        step=step,
        fps=fps,
        per_pod=per_pod,
        latency_seconds=latency_seconds,
        noise_minutes=noise_minutes,
        noise=noise,
        timeout=timeout,
    )
    footage_path = footage or DevSettings().shared_dir / "footage" / "vtest.avi"
    if not footage_path.is_file():
        raise typer.BadParameter(f"{footage_path} is not a file", param_hint="--footage")

    def progress(message: str) -> None:
        console.print(f"[dim]{message}[/dim]")

    try:
        with tempfile.TemporaryDirectory(prefix="pantau-bench-scale-") as tmp:
            stack = DevStack(DevSettings(state_dir=Path(tmp) / "stack"))
            try:
                with console.status("starting the local stack (control plane, node, Triton) ..."):
                    stack.up()
                load_detector(stack)
                with scale.scale_stack(stack, Path(tmp), footage_path, progress) as cluster:
                    report = scale.run(cluster, config)
            finally:
                stack.down()
    except StackError as exc:
        console.print(f"[red]stack failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    _emit(scale.render, report, json_path, width=140)


@bench_app.command("link")
def link_command(
    budgets: Annotated[
        str, typer.Option(help="Link rates and Site budgets, Mbit/s, comma-separated.")
    ] = "0.5,2,10",
    cameras: Annotated[int, typer.Option(min=1, help="Cameras of the district's Site.")] = 3,
    fps: Annotated[float, typer.Option(min=0.1, help="Sampled frames per second each camera asks.")] = 4.0,
    window: Annotated[float, typer.Option(min=5.0, help="Seconds each run is measured over.")] = 40.0,
    outage: Annotated[float, typer.Option(min=1.0, help="Seconds the link is down in each run.")] = 30.0,
    loss: Annotated[float, typer.Option(min=0.0, max=50.0, help="Packet loss on the link, percent.")] = 2.0,
    footage: FootageOption = None,
    model: ModelOption = None,
    json_path: JsonOption = None,
) -> None:
    """Bytes, frame rate, recall, events lost and recovery of a district's Site on a shaped, lossy,
    delayed WAN link with an outage, with Pantau's uplink budget and without adaptation, on a throwaway
    local stack with its node (Pantau installed with its chart)."""
    from pantau_dev.bench import link, link_recall
    from pantau_dev.demo.run import load_detector

    try:
        rates = tuple(float(v) for v in budgets.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(
            "a comma-separated list of Mbit/s, e.g. 0.5,2,10", param_hint="--budgets"
        ) from exc
    if not rates or min(rates) < 0.064:
        raise typer.BadParameter("each budget must be at least 0.064 Mbit/s (64k)", param_hint="--budgets")
    config = link.LinkConfig(
        budgets_mbps=rates, cameras=cameras, fps=fps, window=window, outage=outage, loss_percent=loss
    )
    shared = DevSettings().shared_dir
    footage_path = footage or shared / "footage" / "vtest.avi"
    model_path = model or shared / "models" / "yolox_nano.onnx"
    truth = footage_path.with_name("PETS09-S2L1-gt.txt")
    for path, hint in ((footage_path, "--footage"), (model_path, "--model"), (truth, "--footage")):
        if not path.is_file():
            raise typer.BadParameter(f"{path} is not a file", param_hint=hint)

    def recall(settings: list[tuple[int, float]]) -> dict[tuple[int, float], float]:
        rows = link_recall.recall_table(footage_path, truth, model_path, [(q, s, 10.0) for q, s in settings])
        return {(r.setting.quality, r.setting.scale): r.recall for r in rows}

    def progress(message: str) -> None:
        console.print(f"[dim]{message}[/dim]")

    try:
        with tempfile.TemporaryDirectory(prefix="pantau-bench-link-") as tmp:
            stack = DevStack(DevSettings(state_dir=Path(tmp) / "stack"))
            try:
                with console.status("starting the local stack (control plane, node, Triton) ..."):
                    stack.up()
                load_detector(stack)
                cluster = link.LinkStack(stack, Path(tmp), footage_path, progress)
                try:
                    cluster.up()
                    report = link.run(cluster, config, recall)
                finally:
                    cluster.down()
            finally:
                stack.down()
    except StackError as exc:
        console.print(f"[red]stack failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    _emit(link.render, report, json_path, width=160)


@bench_app.command("analytics")
def analytics_command(
    rates: Annotated[
        str, typer.Option(help="Sampled rates (fps, comma-separated); 10 = full rate.")
    ] = "10,5,2",
    ground_truth: Annotated[
        Path | None, typer.Option(help="MOTChallenge ground truth; default: the shared PETS09-S2L1-gt.txt.")
    ] = None,
    detections: Annotated[
        Path | None,
        typer.Option(help="Detections cache (JSON): read when it exists, else written after detecting."),
    ] = None,
    model: ModelOption = None,
    footage: FootageOption = None,
    json_path: JsonOption = None,
) -> None:
    """Tracking accuracy (MOTA, IDF1, ID switches), line-count error and CPU of Pantau's analytics
    against a naive IoU tracker, on the same in-process detections, at full and sampled rates."""
    from pantau_dev.bench import analytics

    shared = DevSettings().shared_dir
    model_path = model or shared / "models" / "yolox_nano.onnx"
    footage_path = footage or shared / "footage" / "vtest.avi"
    gt_path = ground_truth or shared / "footage" / "PETS09-S2L1-gt.txt"
    for path, option in ((model_path, "--model"), (footage_path, "--footage"), (gt_path, "--ground-truth")):
        if not path.is_file():
            raise typer.BadParameter(f"{path} is not a file", param_hint=option)
    try:
        fps = [float(v) for v in rates.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(
            "a comma-separated list of numbers, e.g. 10,5", param_hint="--rates"
        ) from exc
    if detections is not None and detections.is_file():
        found = analytics.Detections.load(detections)
    else:
        with console.status(f"detecting every frame of {footage_path.name} ..."):
            found = analytics.detect_video(footage_path, model_path)
        if detections is not None:
            found.save(detections)
    truth = analytics.GroundTruth.load(gt_path)
    report = analytics.evaluate(found, truth, fps, str(footage_path), str(gt_path))
    _emit(analytics.render, report, json_path, width=220)
