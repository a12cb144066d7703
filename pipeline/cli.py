"""The ``framestream`` command.

Commands import their heavy dependencies (torch, OpenCV) when they run, so
``framestream broker status`` answers at once.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError, FramestreamError

log = logging.getLogger("framestream")


class _Context:
    def __init__(self, config: Path | None, overrides: dict) -> None:
        self.config = config
        self.overrides = overrides

    def settings(self, **more) -> Settings:
        return load_settings(self.config, self.overrides | more)


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # kafka-python logs every retry of every connection during an outage;
    # framestream reports outages itself.
    logging.getLogger("kafka").setLevel(
        logging.WARNING if verbose else logging.CRITICAL
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    type=click.Path(path_type=Path),
    envvar="FRAMESTREAM_CONFIG",
    help="YAML config file (see configs/default.yaml).",
)
@click.option(
    "--bootstrap-servers",
    help="Kafka cluster to use instead of the local broker (host:port,...).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv: debug).")
@click.pass_context
def cli(ctx, config, bootstrap_servers, verbose) -> None:
    """framestream: video frames through Kafka, detection and per-camera RNNs."""
    _setup_logging(verbose)
    ctx.obj = _Context(config, {"kafka.bootstrap_servers": bootstrap_servers})


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except FramestreamError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)


def _stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM, so work ends cleanly and flushes."""
    stop = threading.Event()

    def request_stop(signum, _frame) -> None:
        log.info("%s received: finishing", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def _require_broker(settings: Settings) -> None:
    """A clear error when the local broker is meant but not running."""
    if not settings.uses_local_broker:
        return
    from pipeline.broker import LocalBroker

    status = LocalBroker(settings.broker, settings.topics.max_message_bytes).status()
    if not status.running:
        raise FramestreamError(
            f"no Kafka broker: the local broker at {settings.bootstrap_servers} is "
            "not running. Start it with `framestream broker start`, or pass "
            "--bootstrap-servers for a cluster of your own"
        )


# --- broker ------------------------------------------------------------------


@cli.group()
def broker() -> None:
    """Run a local single-node Kafka broker (KRaft) with the machine's JDK."""


def _broker_options(func):
    func = click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Folder for the broker's data and logs.",
    )(func)
    func = click.option("--port", type=int, help="Client port (default 9092).")(func)
    return func


def _local_broker(ctx, data_dir, port):
    from pipeline.broker import LocalBroker

    # The controller listens on the port after the client port given.
    controller_port = port + 1 if port is not None else None
    settings = ctx.obj.settings(
        **{
            "broker.data_dir": data_dir,
            "broker.port": port,
            "broker.controller_port": controller_port,
        }
    )
    return LocalBroker(settings.broker, settings.topics.max_message_bytes)


@broker.command("start")
@_broker_options
@click.pass_context
def broker_start(ctx, data_dir, port) -> None:
    """Start the broker (fetching its jars the first time); waits until it answers."""
    status = _local_broker(ctx, data_dir, port).start()
    click.echo(status.describe())


@broker.command("stop")
@_broker_options
@click.pass_context
def broker_stop(ctx, data_dir, port) -> None:
    """Stop the broker cleanly."""
    local = _local_broker(ctx, data_dir, port)
    click.echo("broker stopped" if local.stop() else "broker was not running")


@broker.command("status")
@_broker_options
@click.pass_context
def broker_status(ctx, data_dir, port) -> None:
    """Say whether the broker runs, where, and its data folder."""
    status = _local_broker(ctx, data_dir, port).status()
    click.echo(status.describe())
    sys.exit(0 if status.running else 3)


# --- topics ------------------------------------------------------------------


@cli.group()
def topics() -> None:
    """Manage framestream's topics."""


@topics.command("create")
@click.option("--partitions", type=int, help="Partitions per topic.")
@click.pass_context
def topics_create(ctx, partitions) -> None:
    """Create the frames, results and dead-letter topics where missing."""
    from pipeline.kafka import ensure_topics

    settings = ctx.obj.settings(**{"topics.partitions": partitions})
    _require_broker(settings)
    created = ensure_topics(settings)
    click.echo(f"created: {', '.join(created)}" if created else "all topics exist")


# --- produce -----------------------------------------------------------------


def _speed(value: str | None):
    if value is None or value == "max":
        return value
    try:
        speed = float(value)
    except ValueError:
        raise click.BadParameter(f"expected a number > 0 or 'max', got {value!r}")
    if speed <= 0:
        raise click.BadParameter(f"expected a number > 0 or 'max', got {value!r}")
    return speed


@cli.command()
@click.option("--source", help="Video file, image folder, rtsp/http URL or USB index.")
@click.option("--camera", "camera_id", help="Camera id (the Kafka key).")
@click.option("--topic", help="Frames topic (default from config).")
@click.option("--speed", help="Replay pace of files: 1 (real time), 4, or 'max'.")
@click.option("--loop", is_flag=True, help="Replay a file or folder forever.")
@click.option("--max-frames", type=int, help="Stop after sending this many frames.")
@click.option("--fps-limit", type=float, help="Sample at most this many frames/s.")
@click.option("--max-side", type=int, help="Scale frames down to this longest side.")
@click.option("--quality", type=int, help="JPEG quality 1-100.")
@click.pass_context
def produce(
    ctx, source, camera_id, topic, speed, loop, max_frames, fps_limit, max_side, quality
):
    """Publish camera or video frames to Kafka.

    With --source and --camera, one camera; otherwise the cameras listed in
    the config file. One failing camera never stops the others.
    """
    from producers.runner import produce as run

    settings = ctx.obj.settings(
        **{
            "producer.speed": _speed(speed),
            "producer.fps_limit": fps_limit,
            "producer.max_side": max_side,
            "producer.jpeg_quality": quality,
        }
    )
    if source is not None or camera_id is not None:
        if not (source and camera_id):
            raise click.UsageError("--source and --camera go together")
        entry = {
            "id": camera_id,
            "source": source,
            "topic": topic,
            "loop": loop,
            "max_frames": max_frames,
        }
        cameras = load_settings(None, {"cameras": [entry]}, environ={}).cameras
    else:
        cameras = [
            camera.model_copy(
                update={
                    "topic": topic or camera.topic,
                    "loop": loop or camera.loop,
                    "max_frames": max_frames or camera.max_frames,
                }
            )
            for camera in settings.cameras
        ]
    if not cameras:
        raise click.UsageError(
            "no cameras: pass --source and --camera, or list cameras in --config"
        )

    _require_broker(settings)
    stop = _stop_on_signals()
    summary = run(settings, cameras, stop)
    for line in summary.lines():
        click.echo(line)
    if summary.failed_cameras:
        sys.exit(1)


# --- subscribe ---------------------------------------------------------------


@cli.command()
@click.option("--topic", help="Topic to follow (default: the frames topic).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message.")
@click.option("--from-time", help="Start at a time: ISO 8601 or epoch milliseconds.")
@click.option("--camera", help="Only this camera's messages.")
@click.option("--max-messages", type=int, help="Stop after this many messages.")
@click.option(
    "--timeout", type=float, help="Stop after this many seconds without a message."
)
@click.pass_context
def subscribe(ctx, topic, from_beginning, from_time, camera, max_messages, timeout):
    """Print a topic's messages as JSON lines (frames as headers and size)."""
    from consumers.subscribe import follow, parse_start_time

    if from_beginning and from_time:
        raise click.UsageError("--from-beginning and --from-time exclude each other")
    settings = ctx.obj.settings()
    _require_broker(settings)
    stop = _stop_on_signals()
    messages = follow(
        settings,
        topic or settings.topics.frames,
        start="beginning" if from_beginning else "now",
        from_time_ms=parse_start_time(from_time) if from_time else None,
        camera=camera,
        max_messages=max_messages,
        timeout_s=timeout,
        stop=stop,
    )
    for message in messages:
        click.echo(json.dumps(message))


# --- consume -----------------------------------------------------------------


def _consumer_overrides(device, weights, batch_size, model) -> dict:
    return {
        "consumer.device": device,
        "consumer.detector.weights": weights,
        "consumer.detector.model": model,
        "consumer.batch_size": batch_size,
    }


@cli.command()
@click.option("--topic", help="Frames topic (default from config).")
@click.option("--results-topic", help="Results topic (default from config).")
@click.option("--dead-letter-topic", help="Dead-letter topic (default from config).")
@click.option("--group", help="Consumer group (default from config).")
@click.option(
    "--model", help="Detector: a torchvision model name or a TorchScript file."
)
@click.option("--weights", help="coco, random, or a state-dict file.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--batch-size", type=int, help="Frames per inference batch.")
@click.option("--max-frames", type=int, help="Stop after this many frames.")
@click.option(
    "--idle-timeout", type=float, help="Stop after this many seconds without frames."
)
@click.pass_context
def consume(
    ctx,
    topic,
    results_topic,
    dead_letter_topic,
    group,
    model,
    weights,
    device,
    batch_size,
    max_frames,
    idle_timeout,
):
    """Detect objects in every frame, step each camera's RNN, publish results.

    Several consume processes in one group share the frames topic's partitions.
    """
    from consumers.worker import InferenceWorker

    settings = ctx.obj.settings(
        **_consumer_overrides(device, weights, batch_size, model)
    )
    _require_broker(settings)
    worker = InferenceWorker(
        settings,
        frames_topic=topic,
        results_topic=results_topic,
        dead_letter_topic=dead_letter_topic,
        group=group,
        max_frames=max_frames,
        idle_timeout_s=idle_timeout,
        stop=_stop_on_signals(),
    )
    stats = worker.run()
    for line in stats.lines():
        click.echo(line)


# --- demo --------------------------------------------------------------------


@cli.command()
@click.option(
    "--video",
    type=click.Path(path_type=Path),
    help="Video to replay (default: the sample vtest.avi).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("out"),
    show_default=True,
    help="Folder for results.jsonl and annotated.mp4.",
)
@click.option(
    "--speed",
    default="max",
    show_default=True,
    help="Replay pace: 1 (real time), 4, or 'max'.",
)
@click.option("--max-frames", type=int, help="Replay only this many frames.")
@click.option(
    "--model", help="Detector: a torchvision model name or a TorchScript file."
)
@click.option("--weights", help="coco (default), random, or a state-dict file.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--batch-size", type=int, help="Frames per inference batch.")
@click.option(
    "--keep-broker", is_flag=True, help="Leave a broker the demo started running."
)
@click.pass_context
def demo(
    ctx,
    video,
    out_dir,
    speed,
    max_frames,
    model,
    weights,
    device,
    batch_size,
    keep_broker,
):
    """Run the whole pipeline on recorded video and summarise it.

    Starts the local broker (unless --bootstrap-servers names a cluster),
    replays the video into Kafka, runs detection and the per-camera RNN on every
    frame, and writes results.jsonl and annotated.mp4 into --out.
    """
    from pipeline.demo import run_demo
    from pipeline.samples import sample_video

    settings = ctx.obj.settings(
        **_consumer_overrides(device, weights, batch_size, model)
    )
    stop = _stop_on_signals()
    report = run_demo(
        settings,
        video or sample_video(),
        out_dir,
        speed=_speed(speed),
        max_frames=max_frames,
        keep_broker=keep_broker,
        stop=stop,
    )
    click.echo("\n".join(["", "framestream demo", *report.lines]))
    if len(report.results) < report.frames_sent:
        sys.exit(1)


# --- sample ------------------------------------------------------------------


@cli.command()
def sample() -> None:
    """Fetch the sample video (OpenCV's vtest.avi) and print its path."""
    from pipeline.samples import sample_video

    click.echo(str(sample_video()))


if __name__ == "__main__":
    main()
