"""HTTP + WebSocket server for the browser operator, run by the teleop node in a background thread.

    GET /         the page (``index.html``), opened as /?token=T       GET /app.js   its script
    WS  /ws?token=T  browser -> node: JSON {"type": "pose", "frame": "robot"|"xr", "arms": [{"pos": [x, y, z],
                  "quat": [w, x, y, z], "grip": 0..1, "clutch": bool}, ...]}, {"type": "reset"} or
                  {"type": "instruction", "text": "...", "execute": false|true} (grounded by the grounding node at
                  ``web.grounding``; with execute, also carried out by it) or {"type": "stop_run"}
                  node -> browser: JSON {"type": "hello" | "feedback" | "grounded" | "execution", ...} and binary
                  camera frames
                  [u8 camera index][u16 height][u16 width][height * width * 3 RGB bytes] (big-endian sizes)

Why a thread and an inproc socket: the node's control loop is a ZeroMQ poll loop; the WebSocket side is
asyncio. Browser poses become ordinary bus ``operator`` messages published to the node's inproc SUB socket,
so they pass the same validation, counting and mapping as poses from operator processes, and the node's loop
never waits on a browser. Feedback goes the other way through ``call_soon_threadsafe``; a browser that
cannot keep up skips frames instead of queueing them.

Who may drive the robot. Listening on loopback keeps other machines out, but not other web pages: every page
open in the operator's browser can open a WebSocket to ``127.0.0.1`` (the same-origin policy does not cover
WebSockets), so without checks any site could move the robot (cross-site WebSocket hijacking). A page can
also make its own domain resolve to 127.0.0.1 after it has loaded (DNS rebinding) and then talks to us as
"same-origin" under its own name. Three checks stop both; a failed one answers HTTP 403 with the reason,
counts it in ``rejects`` (logged once per reason) and never reaches the node:

* Host (every request, page and WebSocket): must name this server: ``<web.host>:<port>``, ``localhost:<port>``
  when bound to loopback (browsers resolve ``localhost`` to loopback themselves, so no DNS answer can
  redirect it), and ``web.allowed_hosts``. A rebinding page sends its own domain as Host and is refused.
* Origin (WebSocket): required, and must be the origin of the page the socket was opened from, i.e. the same
  host:port as the Host of that request (http, or https behind a TLS proxy). A page at ``127.0.0.1`` and one
  at ``localhost`` both work, each on its own name; an origin on another port, another name, ``null``
  (sandboxed frames, files) or none is refused. Browsers always send Origin and pages cannot forge it; a
  tool that is not a browser must send the page's origin and the token itself, or better, publish to the bus
  operator socket (``addresses.operator``), which is meant for programs.
* Token (WebSocket): ``secrets.token_urlsafe`` drawn once per server, i.e. per node run, in the query string
  of ``/ws`` (a browser WebSocket cannot carry headers, and the query lets the handshake itself be refused);
  compared in constant time. The node's ready record reports ``url`` (``http://127.0.0.1:PORT/?token=...``)
  as "web"; the page reads the token from its own address. Another page cannot learn it: it cannot read our
  page or its address. The page and script are served without the token: they hold no secret and cannot
  act, and a page opened without it says how to get the right address. They are sent with
  ``Referrer-Policy: no-referrer`` so the token in the address never leaves in a Referer header.

The Host and Origin checks stop hostile pages, and so would the token alone (no other page can learn it); both
are kept so that one mistake (a leaked address, a browser bug, a new rebinding trick) is not enough.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import struct
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from bus.resources import package_dir
from bus.transport import Publisher, is_local_address

if TYPE_CHECKING:
    from teleop.node import WebConfig

log = logging.getLogger("teleop.web")

STATIC_DIR = package_dir("teleop.web")
STATIC_FILES = {"/": ("index.html", "text/html"), "/index.html": ("index.html", "text/html"),
                "/app.js": ("app.js", "text/javascript")}
CAMERAS = ("scene_rgb", "wrist_rgb")
MAX_INSTRUCTION_CHARS = 300
MAX_ARMS = 8
IMAGE_HEADER = struct.Struct(">BHH")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
HOST_ENTRY = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")
# What a refused request is told (HTTP 403 body) and the log says, by the reason counted in ``rejects``.
REFUSALS = {
    "bad_host": "the Host header does not name this server; open the address the teleop node printed",
    "no_origin": "a WebSocket without an Origin header (browsers always send one; a tool must send the page's)",
    "bad_origin": "the Origin is not this server's page: a WebSocket opened by another site",
    "no_token": "no token; open the address the teleop node printed (it ends in ?token=...)",
    "bad_token": "wrong token; it is new every run: open the address the teleop node printed",
}
# websockets logs every refused handshake at INFO; a hostile page retrying would flood the node's log, and
# _refuse() already logs the first refusal of each reason.
HANDSHAKE_LOG = logging.getLogger("teleop.web.handshake")
HANDSHAKE_LOG.setLevel(logging.WARNING)


def host_authority(host: str, port: int) -> str:
    """``host:port`` as a Host header writes it (an IPv6 literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def allowed_hosts(entry: str, port: int) -> list[str]:
    """One ``web.allowed_hosts`` entry (``name`` or ``name:port``, IPv6 in brackets) as lower-case Host values.
    A name without a port is accepted on the served port and without one (a TLS proxy on the default port in
    front, which forwards the browser's Host)."""
    match = HOST_ENTRY.fullmatch(entry.lower())
    if match is None:
        raise ValueError(f"web.allowed_hosts entry {entry!r} is not a host or host:port "
                         "(e.g. 'robot-pc.local', 'robot-pc.local:8765' or '[fd00::5]')")
    return [match.group(0)] if match.group(2) else [f"{match.group(1)}:{port}", match.group(1)]


class WebOperatorServer:
    """Serves the page and bridges WebSocket clients to the node's inproc operator socket."""

    def __init__(self, cfg: WebConfig, operator_address: str) -> None:
        self._loopback = is_local_address(f"tcp://{cfg.host}:0")
        if not cfg.allow_remote and not self._loopback:
            raise ValueError(f"web.host={cfg.host!r} is not a loopback address: the operator page, which moves the "
                             "robot, would be open to other machines. Use 127.0.0.1, or set web.allow_remote=true "
                             "(behind TLS and a firewall) and list the names operators open it at in "
                             "web.allowed_hosts")
        if cfg.host in WILDCARD_HOSTS and not cfg.allowed_hosts:
            raise ValueError(f"web.host={cfg.host!r} listens on every interface, so the Host check has no name for "
                             "this server: list the names operators open the page at in web.allowed_hosts "
                             "(e.g. ['robot-pc.local'])")
        for entry in cfg.allowed_hosts:
            allowed_hosts(entry, 0)  # a bad entry fails here, not at the first request
        self.cfg = cfg
        self.operator_address = operator_address
        self.token = secrets.token_urlsafe(32)  # per run: an address from an earlier run no longer works
        self._token = self.token.encode()
        self._hosts: frozenset[str] = frozenset()
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
        self._asking = threading.Lock()  # one instruction at a time goes to the grounding node
        self._closing = False
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
        self._closing = True
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
                             max_size=65536, compression=None, logger=HANDSHAKE_LOG) as server:
                port = server.sockets[0].getsockname()[1]
                hosts = self.own_hosts(port)
                self._hosts = frozenset(hosts)
                self.url = f"http://{hosts[0]}/?token={self.token}"
                self._ready.set()
                await self._stop_event.wait()
        finally:
            self._pub.close()

    def own_hosts(self, port: int) -> list[str]:
        """The Host values that name this server, lower case; the first is the one the node reports."""
        names = [] if self.cfg.host in WILDCARD_HOSTS else [host_authority(self.cfg.host.lower(), port)]
        if self._loopback:
            names.append(host_authority("localhost", port))
        names += [host for entry in self.cfg.allowed_hosts for host in allowed_hosts(entry, port)]
        return list(dict.fromkeys(names))

    def _http(self, connection: Any, request: Any) -> Any:
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        path, _, query = request.path.partition("?")
        hosts = request.headers.get_all("Host")
        if len(hosts) != 1 or hosts[0].lower() not in self._hosts:
            return self._refuse(connection, "bad_host", ", ".join(hosts))
        if path == "/ws":
            reason, shown = self._ws_refusal(hosts[0], request.headers.get_all("Origin"), query)
            return None if reason is None else self._refuse(connection, reason, shown)
        if path not in self._static:
            return connection.respond(404, f"not found: {path}\n")
        body, ctype = self._static[path]
        headers = Headers([("Content-Type", f"{ctype}; charset=utf-8"), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer")])
        return Response(200, "OK", headers, body)

    def _ws_refusal(self, host: str, origins: list[str], query: str) -> tuple[str | None, str]:
        """Why a WebSocket handshake to ``host`` may not go on (a ``REFUSALS`` key and what to log), or None."""
        if not origins:
            return "no_origin", ""
        try:
            origin = urlsplit(origins[0])
            same = (len(origins) == 1 and origin.scheme in ("http", "https") and origin.netloc.lower() == host.lower()
                    and not (origin.path or origin.query or origin.fragment))
        except ValueError:  # e.g. an unclosed IPv6 bracket
            same = False
        if not same:
            return "bad_origin", f"Origin {', '.join(origins)} for Host {host}"
        tokens = parse_qs(query, keep_blank_values=True).get("token", [])
        if not tokens:
            return "no_token", ""
        if len(tokens) != 1 or not hmac.compare_digest(tokens[0].encode(), self._token):
            return "bad_token", ""  # what was sent is not logged: it may be a real token of an earlier run
        return None, ""

    def _refuse(self, connection: Any, reason: str, shown: str) -> Any:
        """HTTP 403, counted by reason; the first of each reason is logged (a page may retry forever)."""
        if self.rejects[reason] == 0:
            log.warning("refused a browser request: %s%s; further %s refusals are only counted", REFUSALS[reason],
                        f" ({shown[:200]!r})" if shown else "", reason)
        self.rejects[reason] += 1
        return connection.respond(403, f"forbidden: {REFUSALS[reason]}\n")

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
            elif kind == "instruction":
                self._instruction(msg.get("text"), msg.get("execute", False))
            elif kind == "stop_run":
                self._stop_run()
            else:
                raise ValueError(f"type {kind!r}, expected 'pose', 'reset', 'instruction' or 'stop_run'")
            self.received += 1
        except (ValueError, TypeError, KeyError) as exc:
            kind = type(exc).__name__
            if self.rejects[kind] == 0:
                log.warning("dropped a browser message (%s); further %s are only counted", exc, kind)
            self.rejects[kind] += 1

    def _instruction(self, text: Any, execute: Any) -> None:
        """An instruction typed on the page: asked of the grounding node in a worker thread (the answer, or why
        there is none, goes to every page as a ``grounded`` message); one at a time. With ``execute`` the grounding
        node also carries it out (``grounding.node``: rdp.run with the task's goal policy), and every page follows
        that run's state in ``execution`` messages until it ends."""
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_INSTRUCTION_CHARS:
            raise ValueError(f"instruction text must be 1..{MAX_INSTRUCTION_CHARS} characters")
        if type(execute) is not bool:
            raise ValueError("instruction execute must be true or false")
        if not self.cfg.grounding:
            self._answer({"error": "no grounding node: start the teleop node with web.grounding=ADDRESS (the ask "
                                   "address a python -m grounding.node prints)", "instruction": text})
            return
        if not self._asking.acquire(blocking=False):
            self._answer({"error": "still grounding the last instruction", "instruction": text})
            return
        threading.Thread(target=self._ask, args=(text, execute), name="teleop-ground", daemon=True).start()

    def _request(self, topic: str, meta: dict[str, Any] | None = None) -> Any:
        """One request to the grounding node; its reply (TimeoutError, ValueError or OSError if none)."""
        from bus.transport import Client

        with Client(self.cfg.grounding) as client:
            client.send(topic, meta=meta or {})
            return client.recv(timeout=self.cfg.grounding_timeout_s)

    def _ask(self, text: str, execute: bool) -> None:
        ident = None
        try:
            reply = self._request("ground", {"instruction": text, "video": "last", "execute": execute})
            if reply.topic == "grounded":
                answer = json.loads(str(reply.meta.get("grounding", "{}")))
                answer.update({k: reply.meta.get(k) for k in ("episode", "frames", "video_s", "execution",
                                                              "execution_error") if k in reply.meta})
                answer["run"] = (f"python -m rdp.run task={answer.get('task')} policy=rdp_goal "
                                 f"goal={answer.get('goal')}")
                ident = answer.get("execution")
            else:
                answer = {"error": str(reply.meta.get("error", reply.topic))}
        except (TimeoutError, ValueError, OSError) as exc:
            answer = {"error": f"grounding node at {self.cfg.grounding}: {exc}"}
        finally:
            self._asking.release()
        self._answer({**answer, "instruction": text})
        if type(ident) is int:
            self._follow(ident)

    def _follow(self, ident: int) -> None:
        """Every page gets the state of execution ``ident`` each ``grounding_poll_s`` until it has ended."""
        while self._loop is not None and not self._closing:
            status = self._status("execution")
            self._answer(status, "execution")
            if status.get("execution") != ident or status.get("state") != "running":
                return
            time.sleep(self.cfg.grounding_poll_s)

    def _status(self, topic: str) -> dict[str, Any]:
        try:
            reply = self._request(topic)
        except (TimeoutError, ValueError, OSError) as exc:
            return {"error": f"grounding node at {self.cfg.grounding}: {exc}"}
        return dict(reply.meta) if reply.topic == "execution" else {"error": str(reply.meta.get("error", reply.topic))}

    def _stop_run(self) -> None:
        if not self.cfg.grounding:
            self._answer({"error": "no grounding node, so no run to stop"}, "execution")
            return
        threading.Thread(target=lambda: self._answer(self._status("stop"), "execution"), name="teleop-stop-run",
                         daemon=True).start()

    def _answer(self, answer: dict[str, Any], kind: str = "grounded") -> None:
        loop = self._loop
        if loop is not None and not self._closing:
            loop.call_soon_threadsafe(self._broadcast, json.dumps({"type": kind, **answer}), False)

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

    def _broadcast(self, payload: str | bytes, droppable: bool = True) -> None:
        """To every page. A droppable payload (feedback, frames) skips a page still sending the last one; an answer
        is sent to every page all the same."""
        for ws in list(self._conns):
            if not droppable:
                asyncio.ensure_future(self._send(ws, payload, mark=False))
                continue
            if ws in self._busy:
                continue  # still sending the previous frame: skip, do not queue
            self._busy.add(ws)
            asyncio.ensure_future(self._send(ws, payload))

    async def _send(self, ws: Any, payload: str | bytes, mark: bool = True) -> None:
        try:
            await ws.send(payload)
        except Exception:
            pass  # the handler sees the close
        finally:
            if mark:
                self._busy.discard(ws)
