"""HTTP + WebSocket server for the browser operator, run by the teleop node in a background thread.

    GET /         the page (``index.html``)         GET /app.js   its script
    WS  /ws       browser -> node: JSON {"type": "pose", "frame": "robot"|"xr", "arms": [{"pos": [x, y, z],
                  "quat": [w, x, y, z], "grip": 0..1, "clutch": bool}, ...]} or {"type": "reset"}
                  node -> browser: JSON {"type": "hello" | "feedback", ...} and binary camera frames
                  [u8 camera index][u16 height][u16 width][height * width * 3 RGB bytes] (big-endian sizes)

Why a thread and an inproc socket: the node's control loop is a ZeroMQ poll loop; the WebSocket side is
asyncio. Browser poses become ordinary bus ``operator`` messages published to the node's inproc SUB socket,
so they pass the same validation, counting and mapping as poses from operator processes, and the node's loop
never waits on a browser. Feedback goes the other way through ``call_soon_threadsafe``; a browser that
cannot keep up skips frames instead of queueing them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bus.transport import Publisher, is_local_address

if TYPE_CHECKING:
    from teleop.node import WebConfig

log = logging.getLogger("teleop.web")

STATIC_DIR = Path(__file__).resolve().parent
STATIC_FILES = {"/": ("index.html", "text/html"), "/index.html": ("index.html", "text/html"),
                "/app.js": ("app.js", "text/javascript")}
CAMERAS = ("scene_rgb", "wrist_rgb")
MAX_ARMS = 8
IMAGE_HEADER = struct.Struct(">BHH")


class WebOperatorServer:
    """Serves the page and bridges WebSocket clients to the node's inproc operator socket."""

    def __init__(self, cfg: WebConfig, operator_address: str) -> None:
        if not cfg.allow_remote and not is_local_address(f"tcp://{cfg.host}:0"):
            raise ValueError(f"refusing to serve the operator page on {cfg.host!r}: not loopback; set "
                             "web.allow_remote=true (and put it behind TLS) to expose it")
        self.cfg = cfg
        self.operator_address = operator_address
        self.url: str | None = None
        self.clients = 0
        self.rejects: Counter[str] = Counter()
        self.received = 0
        self._hello: dict[str, Any] = {"type": "hello"}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop_event: asyncio.Event | None = None
        self._conns: set[Any] = set()
        self._busy: set[Any] = set()
        self._static = {path: ((STATIC_DIR / name).read_bytes(), ctype) for path, (name, ctype) in STATIC_FILES.items()}

    # --------------------------------------------------------------------------- node thread side
    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="teleop-web", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"web server did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"web server failed to start on {self.cfg.host}:{self.cfg.port}: {self._error}")

    def stop(self) -> None:
        if self._loop is not None and self._stop_event is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(timeout=5)

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        """Broadcast one JSON feedback record (called from the node's loop)."""
        if self._loop is None or not self._conns:
            return
        self._hello["arms"] = feedback.get("arms")
        self._loop.call_soon_threadsafe(self._broadcast, json.dumps(feedback))

    def send_images(self, arrays: dict[str, np.ndarray]) -> None:
        if self._loop is None or not self._conns:
            return
        for idx, name in enumerate(CAMERAS):
            img = arrays.get(name)
            if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                continue
            payload = IMAGE_HEADER.pack(idx, img.shape[0], img.shape[1]) + img.tobytes()
            self._loop.call_soon_threadsafe(self._broadcast, payload)

    # --------------------------------------------------------------------------- web thread side
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); the node then refuses to run
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._pub = Publisher(self.operator_address, bind=False)
        try:
            async with serve(self._handle, self.cfg.host, self.cfg.port, process_request=self._http,
                             max_size=65536, compression=None) as server:
                port = server.sockets[0].getsockname()[1]
                self.url = f"http://{self.cfg.host}:{port}/"
                self._ready.set()
                await self._stop_event.wait()
        finally:
            self._pub.close()

    def _http(self, connection: Any, request: Any) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # go on with the WebSocket handshake
        if path not in self._static:
            return connection.respond(404, f"not found: {path}\n")
        body, ctype = self._static[path]
        headers = Headers([("Content-Type", f"{ctype}; charset=utf-8"), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store")])
        return Response(200, "OK", headers, body)

    async def _handle(self, ws: Any) -> None:
        self._conns.add(ws)
        self.clients = len(self._conns)
        try:
            await ws.send(json.dumps(self._hello))
            async for raw in ws:
                self._on_message(raw)
        except Exception as exc:  # a broken client must not take the server down
            log.info("browser connection closed: %s", exc)
        finally:
            self._conns.discard(ws)
            self._busy.discard(ws)
            self.clients = len(self._conns)

    def _on_message(self, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind == "pose":
                self._publish_pose(msg)
            elif kind == "reset":
                seed = msg.get("seed")
                self._pub.publish("reset", meta={"seed": seed} if type(seed) is int else {})
            else:
                raise ValueError(f"type {kind!r}, expected 'pose' or 'reset'")
            self.received += 1
        except (ValueError, TypeError, KeyError) as exc:
            kind = type(exc).__name__
            if self.rejects[kind] == 0:
                log.warning("dropped a browser message (%s); further %s are only counted", exc, kind)
            self.rejects[kind] += 1

    def _publish_pose(self, msg: dict[str, Any]) -> None:
        arms = msg["arms"]
        if not isinstance(arms, list) or not 0 < len(arms) <= MAX_ARMS:
            raise ValueError(f"arms must be a list of 1..{MAX_ARMS} poses")
        pose = np.array([[*a["pos"], *a["quat"]] for a in arms], dtype=np.float64)
        grip = np.array([a.get("grip", 1.0) for a in arms], dtype=np.float64)
        clutch = np.array([bool(a.get("clutch", False)) for a in arms], dtype=np.uint8)
        if pose.shape != (len(arms), 7):
            raise ValueError(f"each arm needs pos (3) and quat (4), got shape {pose.shape}")
        frame = msg.get("frame", "robot")
        self._pub.publish("operator", {"pose": pose, "grip": grip, "clutch": clutch},
                          {"frame": str(frame), "sent": time.monotonic(), "source": "web"})

    def _broadcast(self, payload: str | bytes) -> None:
        for ws in list(self._conns):
            if ws in self._busy:
                continue  # still sending the previous frame: skip, do not queue
            self._busy.add(ws)
            asyncio.ensure_future(self._send(ws, payload))

    async def _send(self, ws: Any, payload: str | bytes) -> None:
        try:
            await ws.send(payload)
        except Exception:
            pass  # the handler sees the close
        finally:
            self._busy.discard(ws)
