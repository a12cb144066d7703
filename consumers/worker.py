"""The inference consumer: frames in, one result per frame out.

Each cycle polls a batch (``batch_size`` frames or ``max_wait_ms``, whichever
comes first), checks and decodes it, runs the detector once over the batch,
steps each camera's RNN, publishes results and dead letters, waits for the
broker to acknowledge them, and only then commits the batch's offsets: a
frame's offset is never committed before its result is safe (at least once).

Polls fetch at most one batch, so the next poll always comes within one
batch's inference time, far inside ``max_poll_interval_ms``; a slow model
never gets the consumer thrown out of its group.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from itertools import islice
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata
from tqdm import tqdm

from consumers.decoding import FrameRecord, check_frame, decode_on_cpu, decode_on_cuda
from consumers.detection import Detector, build_detector
from consumers.results import build_result, encode_result
from consumers.sequence import (
    CameraStates,
    SequenceInput,
    SequenceModel,
    build_sequence_model,
)
from pipeline.config import Settings
from pipeline.errors import ConfigError, MessageError
from pipeline.kafka import (
    describe_connection,
    ensure_topics,
    make_consumer,
    make_producer,
)
from pipeline.messages import RESULT_SCHEMA, dead_letter_headers, is_end_of_stream

log = logging.getLogger(__name__)

# How often the progress line (or, off a terminal, a log line) is refreshed.
_REPORT_EVERY_S = 5.0
# Latency percentiles are over at most this many of the latest frames.
_LATENCY_WINDOW_FRAMES = 100_000
# After a failed result send, pause before re-reading the batch.
_RETRY_PAUSE_S = 1.0


@dataclass
class ConsumeStats:
    frames_in: int = 0
    results_out: int = 0
    dead_letters: int = 0
    end_of_streams: int = 0
    batches: int = 0
    commit_failures: int = 0
    send_failures: int = 0
    detections: int = 0
    # The latest frames' latencies, for percentiles; bounded so that a
    # consumer running for weeks does not grow without end.
    latencies_ms: deque[int] = field(
        default_factory=lambda: deque(maxlen=_LATENCY_WINDOW_FRAMES)
    )
    started_s: float = field(default_factory=time.monotonic)
    finished_s: float | None = None
    # Seconds inside the detector and RNN alone, to compare with the whole.
    inference_s: float = 0.0

    @property
    def elapsed_s(self) -> float:
        return (self.finished_s or time.monotonic()) - self.started_s

    @property
    def fps(self) -> float:
        return self.results_out / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latency_ms(self, percentile: float) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(self.latencies_ms, percentile))

    def lines(self) -> list[str]:
        per_frame = self.detections / self.results_out if self.results_out else 0.0
        mean_batch = self.frames_in / self.batches if self.batches else 0.0
        lines = [
            f"frames in {self.frames_in}, results out {self.results_out}, "
            f"dead letters {self.dead_letters}, end-of-streams {self.end_of_streams}",
            f"{self.fps:.1f} frames/s over {self.elapsed_s:.1f} s, "
            f"{self.batches} batches (mean {mean_batch:.1f} frames), "
            f"{per_frame:.2f} detections per frame",
        ]
        if self.latencies_ms:
            lines.append(
                "latency ms p50 {:.0f}, p95 {:.0f}, p99 {:.0f}".format(
                    self.latency_ms(50), self.latency_ms(95), self.latency_ms(99)
                )
            )
        if self.commit_failures or self.send_failures:
            lines.append(
                f"commit failures {self.commit_failures}, "
                f"result send failures {self.send_failures} (frames re-read)"
            )
        return lines


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("consumer.device: expected a CUDA device, found none")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


class InferenceWorker:
    """One member of the inference consumer group.

    ``detector`` and ``sequence_model`` may be given ready-made (tests, or a
    model not in config); otherwise they are built from ``settings.consumer``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        frames_topic: str | None = None,
        results_topic: str | None = None,
        dead_letter_topic: str | None = None,
        group: str | None = None,
        detector: Detector | None = None,
        sequence_model: SequenceModel | None = None,
        max_frames: int | None = None,
        idle_timeout_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        config = settings.consumer
        self.frames_topic = frames_topic or settings.topics.frames
        self.results_topic = results_topic or settings.topics.results
        self.dead_letter_topic = dead_letter_topic or settings.topics.dead_letters
        self.group = group or config.group
        self.max_frames = max_frames
        self.idle_timeout_s = idle_timeout_s
        self.stop = stop or threading.Event()
        self.stats = ConsumeStats()

        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = detector.device if detector else select_device(config.device)
        self.detector = detector or build_detector(
            config.detector, self.device, config.fp16
        )
        if sequence_model is None:
            sequence_model = build_sequence_model(
                config.sequence, self.detector.vector_size, self.device
            )
        self.states = CameraStates(sequence_model, config.sequence.reset_gap_ms)
        self.model_info = {
            "detector": self.detector.name,
            "weights": self.detector.weights,
            "rnn": config.sequence.cell,
            "rnn_weights": sequence_model.weights_name,
        }

    # --- the loop ---------------------------------------------------------------

    def run(self) -> ConsumeStats:
        config = self.settings.consumer
        ensure_topics(
            self.settings,
            [self.frames_topic, self.results_topic, self.dead_letter_topic],
        )
        consumer = make_consumer(
            self.settings,
            self.frames_topic,
            group_id=self.group,
            auto_offset_reset="earliest",
            max_poll_records=config.batch_size,
            max_poll_interval_ms=config.max_poll_interval_ms,
        )
        # kafka-python may join the group before it knows the topic's
        # partitions; as leader it then assigns nothing and rejoins, and if a
        # poll times out during that second join (kafka-python 3.0.12) the new
        # assignment is never applied: the worker holds partitions it never
        # reads. With the metadata loaded first, the first assignment is whole.
        consumer.partitions_for_topic(self.frames_topic)
        producer = make_producer(self.settings)
        log.info(
            "consuming %s as group %s on %s: %s (%s) on %s, batches of %d",
            self.frames_topic,
            self.group,
            describe_connection(self.settings),
            self.detector.name,
            self.detector.weights,
            self.device,
            config.batch_size,
        )
        progress = tqdm(desc="consume", unit="frame", disable=None, leave=False)
        last_record_s = time.monotonic()
        last_report_s = time.monotonic()
        try:
            while not self.stop.is_set() and not self._reached_max_frames():
                records = self._collect(consumer)
                now = time.monotonic()
                if records:
                    if self.stats.batches == 0 and self.stats.frames_in == 0:
                        # Rates count from the first frame, not from start-up.
                        self.stats.started_s = now
                    last_record_s = now
                    self._handle(records, consumer, producer)
                    progress.update(len(records))
                elif (
                    self.idle_timeout_s is not None
                    and now - last_record_s > self.idle_timeout_s
                ):
                    log.info("no frames for %.0f s: stopping", self.idle_timeout_s)
                    break
                if now - last_report_s > _REPORT_EVERY_S:
                    last_report_s = now
                    self._report(consumer, progress)
        finally:
            progress.close()
            producer.flush(timeout=30)
            producer.close(timeout=5)
            consumer.close()
            self.stats.finished_s = time.monotonic()
        return self.stats

    def _reached_max_frames(self) -> bool:
        return self.max_frames is not None and self.stats.frames_in >= self.max_frames

    def _collect(self, consumer) -> list:
        """Up to one batch: ``batch_size`` records or ``max_wait_ms`` after the
        first, whichever comes first; [] when nothing came within 200 ms."""
        config = self.settings.consumer
        wanted = config.batch_size
        if self.max_frames is not None:
            wanted = min(wanted, self.max_frames - self.stats.frames_in)
        records: list = []
        deadline: float | None = None
        while len(records) < wanted and not self.stop.is_set():
            if deadline is None:
                timeout_ms = 200
            else:
                timeout_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            polled = consumer.poll(
                timeout_ms=timeout_ms, max_records=wanted - len(records)
            )
            for partition_records in polled.values():
                records.extend(partition_records)
            if not records:
                return records
            if deadline is None:
                deadline = time.monotonic() + config.max_wait_ms / 1000.0
            if time.monotonic() >= deadline:
                break
        return records

    # --- one batch ----------------------------------------------------------------

    def _handle(self, records: list, consumer, producer) -> None:
        futures: list = []
        frames: list[FrameRecord] = []
        ends: list = []
        for record in records:
            if is_end_of_stream(record.headers):
                ends.append(record)
                continue
            self.stats.frames_in += 1
            try:
                frames.append(check_frame(record))
            except MessageError as err:
                futures.append(self._dead_letter(producer, record, str(err)))

        frames, images = self._decode(frames, producer, futures)
        if frames:
            futures.extend(self._infer_and_publish(frames, images, producer))
        for record in ends:
            self._end_stream(record, frames)

        producer.flush(timeout=self.settings.producer.delivery_timeout_ms / 1000.0)
        failed = [future for future in futures if not future.is_done or future.failed()]
        if failed:
            self.stats.send_failures += len(failed)
            first = failed[0].exception if failed[0].is_done else "not acknowledged"
            log.error(
                "%d result(s) of this batch were not acknowledged (%s); re-reading "
                "the batch",
                len(failed),
                first,
            )
            self._rewind(consumer, records)
            time.sleep(_RETRY_PAUSE_S)
            return
        self.stats.batches += 1
        self._commit(consumer, records)

    def _decode(self, frames: list[FrameRecord], producer, futures: list):
        if self.device.type == "cuda":
            decoded = decode_on_cuda(frames, self.device)
        else:
            decoded = []
            for frame in frames:
                try:
                    decoded.append(decode_on_cpu(frame))
                except MessageError as err:
                    decoded.append(err)
        kept, images = [], []
        for frame, image in zip(frames, decoded):
            if isinstance(image, MessageError):
                futures.append(self._dead_letter(producer, frame.record, str(image)))
            else:
                kept.append(frame)
                images.append(image)
        return kept, images

    def _infer_and_publish(
        self, frames: list[FrameRecord], images: list, producer
    ) -> list:
        started = time.perf_counter()
        try:
            output = self.detector(images)
        except Exception as err:  # a model failure must not take the batch down
            if len(frames) == 1:
                log.exception("detector failed on a frame; sent to dead letters")
                return [
                    self._dead_letter(
                        producer, frames[0].record, f"detector failed: {err!r}"
                    )
                ]
            # Retry one by one so that only the frames that fail are refused.
            futures = []
            for frame, image in zip(frames, images):
                futures.extend(self._infer_and_publish([frame], [image], producer))
            return futures

        vectors = output.vectors(self.detector.num_classes)
        steps = self.states.step(
            [
                SequenceInput(
                    frame.headers.camera_id,
                    frame.headers.seq,
                    frame.headers.capture_ts_ms,
                    vector,
                )
                for frame, vector in zip(frames, vectors)
            ]
        )
        self.stats.inference_s += time.perf_counter() - started

        processed_ts_ms = int(time.time() * 1000)
        futures = []
        for frame, detections, sequence in zip(frames, output.detections, steps):
            result = build_result(
                frame, detections, sequence, self.model_info, processed_ts_ms
            )
            futures.append(
                producer.send(
                    self.results_topic,
                    key=frame.headers.camera_id,
                    value=encode_result(result),
                    headers=[("schema", RESULT_SCHEMA.encode())],
                )
            )
            self.stats.results_out += 1
            self.stats.detections += len(detections)
            self.stats.latencies_ms.append(result["latency_ms"])
        return futures

    def _end_stream(self, record, frames: list[FrameRecord]) -> None:
        camera_id = (record.key or b"").decode("utf-8", "replace")
        self.stats.end_of_streams += 1
        # A new run of the same camera later in this batch has already started
        # afresh (its seq went back); its state must not be dropped.
        later = any(
            frame.headers.camera_id == camera_id and frame.record.offset > record.offset
            for frame in frames
            if frame.record.partition == record.partition
        )
        if not later:
            self.states.end_of_stream(camera_id)
        log.debug("camera %s: end of stream at offset %d", camera_id, record.offset)

    def _dead_letter(self, producer, record, reason: str):
        self.stats.dead_letters += 1
        log.warning(
            "frame at %s[%d]@%d refused: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        return producer.send(
            self.dead_letter_topic,
            key=(record.key or b"").decode("utf-8", "backslashreplace"),
            value=record.value or b"",
            headers=dead_letter_headers(record, reason, self.group),
        )

    # --- offsets --------------------------------------------------------------------

    def _commit(self, consumer, records: list) -> None:
        owned = consumer.assignment()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            if partition in owned:
                offsets[partition] = OffsetAndMetadata(record.offset + 1, "", -1)
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError) as err:
            # The results are out; the new owner of these partitions reads the
            # frames again and publishes repeats (at least once).
            self.stats.commit_failures += 1
            log.warning("offset commit failed, frames will be re-read: %s", err)

    def _rewind(self, consumer, records: list) -> None:
        first: dict[TopicPartition, int] = {}
        for record in records:
            partition = TopicPartition(record.topic, record.partition)
            first[partition] = min(first.get(partition, record.offset), record.offset)
        owned = consumer.assignment()
        for partition, offset in first.items():
            if partition in owned:
                consumer.seek(partition, offset)

    def _report(self, consumer, progress) -> None:
        lag = 0
        for partition in consumer.assignment():
            highwater = consumer.highwater(partition)
            if highwater is not None:
                try:
                    lag += max(0, highwater - consumer.position(partition))
                except KafkaError:
                    pass
        recent = list(islice(reversed(self.stats.latencies_ms), 200))
        latency = f"{np.percentile(recent, 50):.0f}" if recent else "-"
        mean_batch = self.stats.frames_in / max(1, self.stats.batches)
        line = (
            f"{self.stats.fps:.1f} frames/s, batch {mean_batch:.1f}, "
            f"latency p50 {latency} ms, lag {lag}"
        )
        if progress.disable:
            log.info("%s", line)
        else:
            progress.set_postfix_str(line)
