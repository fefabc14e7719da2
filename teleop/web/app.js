// Browser operator for the slowfast teleop node: WebXR immersive-ar when available, mouse/keyboard otherwise.
// Everything a test (or a curious operator) needs is on window.teleop.
"use strict";

const SEND_HZ = 50;
const LIN_SPEED = 0.15;   // m/s while a move key is held
const ROT_SPEED = 0.8;    // rad/s while a rotate key is held
const XR_ARM_HANDS = ["right", "left"];  // arm 0 <- right controller, arm 1 <- left controller

// The server refuses a WebSocket without this run's token; the node prints the page address that carries it.
const TOKEN = new URLSearchParams(location.search).get("token");

const state = {
  connected: false, refused: 0, mode: "fallback",
  xr: { supported: false, active: false, error: null, frames: 0, drawn: { frame: 0, views: 0, markerArrows: 0, force: [] } },
  arms: 0, arm: 0, hands: [], sent: 0, received: 0, images: 0, resets: 0,
  feedback: null, hello: null, lastFeedbackAt: 0,
  drawn: { markerArrows: 0, forceArrows: 0, frames: 0 },
  keys: {}, clutchLatch: false, errors: [],
};
window.teleop = state;

// ------------------------------------------------------------------------------------------- math
function qmul(a, b) {
  return [a[0]*b[0] - a[1]*b[1] - a[2]*b[2] - a[3]*b[3], a[0]*b[1] + a[1]*b[0] + a[2]*b[3] - a[3]*b[2],
          a[0]*b[2] - a[1]*b[3] + a[2]*b[0] + a[3]*b[1], a[0]*b[3] + a[1]*b[2] - a[2]*b[1] + a[3]*b[0]];
}
function qaxis(axis, angle) {
  const s = Math.sin(angle / 2);
  return [Math.cos(angle / 2), axis[0]*s, axis[1]*s, axis[2]*s];
}
function qnorm(q) { const n = Math.hypot(...q) || 1; return q.map((v) => v / n); }
function qrot(q, v) {  // rotate v by unit quaternion q = [w, x, y, z]
  const r = qmul(qmul(q, [0, ...v]), [q[0], -q[1], -q[2], -q[3]]);
  return [r[1], r[2], r[3]];
}

// ------------------------------------------------------------------------------------------- hands
function ensureHands(n) {
  while (state.hands.length < n) state.hands.push({ pos: [0, 0, 0], quat: [1, 0, 0, 0], grip: 1.0, clutch: false });
  state.arms = n;
  if (state.arm >= n) state.arm = 0;
}
function clutchHeld(i) {
  return i === state.arm && (state.clutchLatch || !!state.keys[" "]);
}
state.setClutch = (on) => { state.clutchLatch = !!on; };
state.nudge = (dx, dy, dz) => {
  const h = state.hands[state.arm];
  if (h) { h.pos[0] += dx; h.pos[1] += dy; h.pos[2] += dz; }
};
state.reset = () => { send({ type: "reset" }); state.resets += 1; };

function stepKeys(dt) {
  const h = state.hands[state.arm];
  if (!h) return;
  const k = state.keys, v = LIN_SPEED * dt, w = ROT_SPEED * dt;
  const axes = [["w", 0, 1], ["s", 0, -1], ["a", 1, 1], ["d", 1, -1], ["r", 2, 1], ["f", 2, -1]];
  for (const [key, axis, sign] of axes) if (k[key]) h.pos[axis] += sign * v;
  const rots = [["j", [0, 0, 1], 1], ["l", [0, 0, 1], -1], ["i", [0, 1, 0], 1], ["k", [0, 1, 0], -1],
                ["u", [1, 0, 0], 1], ["o", [1, 0, 0], -1]];
  for (const [key, axis, sign] of rots) if (k[key]) h.quat = qnorm(qmul(qaxis(axis, sign * w), h.quat));
}

// ------------------------------------------------------------------------------------------- socket
let ws = null;
function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) { ws.send(JSON.stringify(obj)); return true; }
  return false;
}
function connect() {
  if (!TOKEN) return;  // nothing to present: updateHeader says which address to open
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(TOKEN)}`);
  ws.binaryType = "arraybuffer";
  let opened = false;
  ws.onopen = () => { opened = true; state.connected = true; state.refused = 0; };
  ws.onclose = () => {  // a refused handshake closes without opening: most likely a token from an earlier run
    state.connected = false;
    if (!opened) state.refused += 1;
    setTimeout(connect, Math.min(5000, 1000 * (1 + state.refused)));
  };
  ws.onerror = () => { state.errors.push("websocket error"); };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data);
      if (msg.type === "hello") { state.hello = msg; if (msg.arms) ensureHands(msg.arms); return; }
      if (msg.type === "grounded") { showAnswer(msg); return; }
      if (msg.type === "execution") { showRun(msg); return; }
      if (msg.type === "feedback") {
        state.feedback = msg; state.received += 1; state.lastFeedbackAt = performance.now();
        if (msg.arms) ensureHands(msg.arms);
      }
    } else {
      drawImage(ev.data);
    }
  };
}
function showAnswer(a) {  // what the grounding node made of the last instruction (or why it could not)
  const el = document.getElementById("answer");
  if (a.error) { el.textContent = `"${a.instruction}": ${a.error}`; el.style.color = "#f99"; return; }
  const fields = Object.entries(a.fields || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  el.style.color = "#cfd";
  el.textContent = `"${a.instruction}" -> task ${a.task}, goal ${a.goal} (${fields}), confidence ` +
    `${(a.confidence || 0).toFixed(2)}, from ${a.frames} frames of episode ${a.episode}\nrun: ${a.run}`;
  if (a.execution_error) showRun({ error: `not carried out: ${a.execution_error}` });
}
function showRun(r) {  // the state of the run carrying out the last grounding (grounding.node's rdp.run)
  const el = document.getElementById("run");
  const running = r.state === "running";
  document.getElementById("stop-run").disabled = !running;
  if (r.error && !r.state) { el.textContent = r.error; el.style.color = "#f99"; return; }
  el.style.color = running ? "#ffd" : r.state === "succeeded" ? "#cfd" : "#f99";
  el.textContent = `run ${r.execution} (${r.task}, goal ${r.goal}, ${r.mode}): ${r.state}, ${r.elapsed_s} s` +
    (r.outcome ? `\n${r.outcome}` : "") + (r.error ? `\n${r.error}` : "");
}

function sendPoses(frame) {
  if (!state.arms) return;
  const arms = state.hands.slice(0, state.arms).map((h, i) => ({
    pos: h.pos, quat: h.quat, grip: h.grip, clutch: frame === "xr" ? h.clutch : clutchHeld(i),
  }));
  if (send({ type: "pose", frame, arms })) state.sent += 1;
}

// ------------------------------------------------------------------------------------------- drawing
function drawImage(buf) {
  const dv = new DataView(buf);
  const idx = dv.getUint8(0), h = dv.getUint16(1), w = dv.getUint16(3);
  const canvas = document.getElementById(`cam${idx}`);
  if (!canvas || buf.byteLength !== 5 + w * h * 3) return;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h), rgb = new Uint8Array(buf, 5);
  for (let p = 0, q = 0; p < w * h * 3; p += 3, q += 4) {
    img.data[q] = rgb[p]; img.data[q + 1] = rgb[p + 1]; img.data[q + 2] = rgb[p + 2]; img.data[q + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  state.images += 1;
}

function arrow(ctx, x0, y0, x1, y1, color, width) {
  const ang = Math.atan2(y1 - y0, x1 - x0), len = Math.hypot(x1 - x0, y1 - y0), head = Math.min(6, len * 0.4);
  ctx.strokeStyle = color; ctx.lineWidth = width;
  ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1);
  ctx.lineTo(x1 - head * Math.cos(ang - 0.5), y1 - head * Math.sin(ang - 0.5));
  ctx.moveTo(x1, y1); ctx.lineTo(x1 - head * Math.cos(ang + 0.5), y1 - head * Math.sin(ang + 0.5));
  ctx.stroke();
}

function drawTactile(fb) {
  const canvas = document.getElementById("tactile"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  let arrows = 0;
  const pads = fb && fb.marker_offset ? fb.marker_offset : [];
  const cols = 3, pw = canvas.width / cols, ph = pads.length > 3 ? canvas.height / 2 : canvas.height;
  pads.forEach((grid, p) => {  // grid: 7 x 9 x 2 offsets, mm
    const ox = (p % cols) * pw, oy = Math.floor(p / cols) * ph, sx = (pw - 30) / 8, sy = (ph - 40) / 6;
    ctx.fillStyle = "#889"; ctx.font = "11px sans-serif";
    ctx.fillText(fb.pads && fb.pads[p] ? fb.pads[p] : `pad ${p}`, ox + 6, oy + 12);
    for (let r = 0; r < grid.length; r++) {
      for (let c = 0; c < grid[r].length; c++) {
        const x = ox + 15 + c * sx, y = oy + 25 + r * sy, d = grid[r][c];
        ctx.fillStyle = "#556"; ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
        const mag = Math.hypot(d[0], d[1]);
        if (mag > 0.005) {
          const k = Math.min(40 / mag, 60);  // px per mm, long arrows clipped to 40 px
          arrow(ctx, x, y, x + d[0] * k, y - d[1] * k, "#4fc3f7", 1.5);
          arrows += 1;
        }
      }
    }
  });
  state.drawn.markerArrows = arrows;
}

function drawForce(fb) {
  const canvas = document.getElementById("force"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  let n = 0;
  (fb && fb.wrench ? fb.wrench : []).forEach((w, i) => {
    const cx = 110 + i * 220, cy = 100, k = 4;  // px per N
    ctx.strokeStyle = "#444"; ctx.beginPath(); ctx.arc(cx, cy, 80, 0, 2 * Math.PI); ctx.stroke();
    const fx = w[0], fy = w[1], fz = w[2], norm = Math.hypot(fx, fy, fz);
    if (norm > 0.05) { arrow(ctx, cx, cy, cx + fx * k, cy - fy * k, "#ff7043", 3); n += 1; }
    ctx.fillStyle = fz < 0 ? "#ff7043" : "#66bb6a";
    ctx.fillRect(cx + 95, cy, 10, Math.max(-90, Math.min(90, -fz * k)));
    ctx.fillStyle = "#ccd"; ctx.font = "12px sans-serif";
    ctx.fillText(`arm ${i}  |F| ${norm.toFixed(1)} N  Fz ${fz.toFixed(1)}`, cx - 70, 192);
  });
  state.drawn.forceArrows = n;
}

function project(p) {  // world (robot) -> 3-D view pixels: fixed camera front-left of the work area
  const eye = [1.5, -1.0, 0.9], at = [0.5, 0.0, 0.15];
  const f = [at[0] - eye[0], at[1] - eye[1], at[2] - eye[2]], fn = Math.hypot(...f);
  const fw = f.map((v) => v / fn);
  let r = [fw[1], -fw[0], 0]; const rn = Math.hypot(...r); r = r.map((v) => v / rn);
  const u = [r[1] * fw[2] - r[2] * fw[1], r[2] * fw[0] - r[0] * fw[2], r[0] * fw[1] - r[1] * fw[0]];
  const d = [p[0] - eye[0], p[1] - eye[1], p[2] - eye[2]];
  const z = d[0] * fw[0] + d[1] * fw[1] + d[2] * fw[2];
  const x = d[0] * r[0] + d[1] * r[1] + d[2] * r[2], y = d[0] * u[0] + d[1] * u[1] + d[2] * u[2];
  return [240 + 420 * x / z, 180 - 420 * y / z];
}

function draw3d(fb) {
  const canvas = document.getElementById("view3d"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#2a2e33"; ctx.lineWidth = 1;
  for (let i = -5; i <= 5; i++) {
    let a = project([0.5 + i * 0.1, -0.5, 0]), b = project([0.5 + i * 0.1, 0.5, 0]);
    ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.stroke();
    a = project([0.0, i * 0.1, 0]); b = project([1.0, i * 0.1, 0]);
    ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.stroke();
  }
  if (!fb || !fb.tcp_pos) return;
  fb.tcp_pos.forEach((p, i) => {
    const s = project(p);
    ctx.fillStyle = fb.engaged && fb.engaged[i] ? "#66bb6a" : "#90a4ae";
    ctx.beginPath(); ctx.arc(s[0], s[1], 7, 0, 2 * Math.PI); ctx.fill();
    if (fb.target && fb.target[i]) {
      const t = project(fb.target[i].slice(0, 3));
      ctx.strokeStyle = "#ffd54f"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(t[0] - 6, t[1]); ctx.lineTo(t[0] + 6, t[1]);
      ctx.moveTo(t[0], t[1] - 6); ctx.lineTo(t[0], t[1] + 6); ctx.stroke();
    }
    if (fb.wrench && fb.wrench[i] && fb.tcp_quat) {  // wrench is in the TCP frame: rotate to world
      const f = qrot(fb.tcp_quat[i], fb.wrench[i].slice(0, 3));
      const e = project([p[0] + 0.01 * f[0], p[1] + 0.01 * f[1], p[2] + 0.01 * f[2]]);
      if (Math.hypot(e[0] - s[0], e[1] - s[1]) > 2) arrow(ctx, s[0], s[1], e[0], e[1], "#ff7043", 3);
    }
  });
}

function updateHeader() {
  const fb = state.feedback || {};
  const set = (id, text, cls) => { const el = document.getElementById(id); el.textContent = text; el.className = `pill ${cls || ""}`; };
  let conn = state.connected ? "connected" : "disconnected";
  if (!TOKEN) conn = "no token: open the address the teleop node printed (.../?token=...)";
  else if (!state.connected && state.refused >= 2) conn = "refused: open the address the teleop node printed (new token each run)";
  set("conn", conn, state.connected ? "ok" : "bad");
  set("mode", state.mode + (state.xr.supported ? " (AR available)" : state.xr.error ? ` (${state.xr.error})` : ""));
  const engaged = fb.engaged && fb.engaged[state.arm];
  set("clutch", engaged ? "clutch on" : "clutch off", engaged ? "ok" : "");
  set("arm", `arm ${state.arm} / ${state.arms}` + (fb.lost_sync && fb.lost_sync[state.arm] ? ` lost sync x${fb.lost_sync[state.arm]}` : ""));
  set("episode", `episode ${fb.episode ?? "-"}  t ${fb.sim_time ?? "-"}`);
  set("hold", fb.held ? `robot held: ${fb.hold_reason}` : "robot following", fb.held ? "warn" : "ok");
}

function render() {
  const fb = state.feedback;
  try {
    draw3d(fb); drawTactile(fb); drawForce(fb); updateHeader();
    state.drawn.frames += 1;
  } catch (err) { state.errors.push(String(err)); }
}

// ------------------------------------------------------------------------------------------- fallback loop
let lastStep = performance.now();
function fallbackTick() {  // in XR the XR frames send the poses; the 2-D views (a dom-overlay shows them) still update
  const now = performance.now();
  if (state.mode === "fallback") {
    stepKeys(Math.min(0.1, (now - lastStep) / 1000));
    sendPoses("robot");
  }
  lastStep = now;
  render();
}

window.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement) return;  // typing an instruction never moves the arm or the clutch
  const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  if (key === "Tab") { state.arm = (state.arm + 1) % Math.max(1, state.arms); ev.preventDefault(); return; }
  if (key === "c" && !ev.repeat) state.clutchLatch = !state.clutchLatch;
  if (key === "g" && !ev.repeat && state.hands[state.arm]) state.hands[state.arm].grip = 1 - state.hands[state.arm].grip;
  state.keys[key] = true;
  if (key === " ") ev.preventDefault();
});
window.addEventListener("keyup", (ev) => { state.keys[ev.key.length === 1 ? ev.key.toLowerCase() : ev.key] = false; });
window.addEventListener("blur", () => { state.keys = {}; });  // never leave a key (or the clutch) stuck

const view = document.getElementById("view3d");
let drag = null;
view.addEventListener("mousedown", (ev) => { drag = [ev.clientX, ev.clientY]; });
window.addEventListener("mouseup", () => { drag = null; });
view.addEventListener("mousemove", (ev) => {
  if (!drag) return;
  const dx = ev.clientX - drag[0], dy = ev.clientY - drag[1];
  drag = [ev.clientX, ev.clientY];
  state.nudge(-dy * 0.001, -dx * 0.001, 0);  // screen up = away from the operator, right = robot -y
});
view.addEventListener("wheel", (ev) => { state.nudge(0, 0, -Math.sign(ev.deltaY) * 0.005); ev.preventDefault(); });
document.getElementById("reset-button").addEventListener("click", () => state.reset());
function ask(execute) {  // typing must not drive the arm
  const text = document.getElementById("instruction").value.trim();
  if (text && send({ type: "instruction", text, execute })) document.getElementById("answer").textContent =
    execute ? "grounding, then running ..." : "grounding ...";
}
document.getElementById("ask").addEventListener("submit", (ev) => { ev.preventDefault(); ask(false); });
document.getElementById("ground-run").addEventListener("click", () => ask(true));
document.getElementById("stop-run").addEventListener("click", () => send({ type: "stop_run" }));

// ------------------------------------------------------------------------------------------- WebXR
// Immersive AR, TactAR-style: each controller's grip pose drives its arm (XR_ARM_HANDS), the squeeze holds the
// clutch and the trigger closes the gripper. In the XR frame each arm's wrist force is an arrow from its controller
// (XR_FORCE_M_PER_N) and its first pad's marker offsets are arrows on a panel above it. teleop.xr.drawn records what
// the last XR frame drew, made from the very arrow list given to WebGL, so a test (or an operator's console) can see
// it without reading pixels back.
const XR_TO_ROBOT = (v) => [-v[2], -v[0], v[1]];  // same frame map as teleop.node FRAMES["xr"]
const ROBOT_TO_XR = (v) => [-v[1], v[2], -v[0]];
const XR_FORCE_M_PER_N = 0.01;     // force arrow: 1 cm per N
const XR_MARKER_M_PER_MM = 0.01;   // marker arrow: 1 cm per mm of marker offset ...
const XR_MARKER_MAX_M = 0.015;     // ... clipped to 1.5 marker spacings, as the 2-D view clips its arrows
const XR_MARKER_PITCH_M = 0.01;    // marker spacing on the panel
const XR_PANEL_ABOVE_M = 0.08;     // panel's lowest row above the controller
const FORCE_COLOR = [1.0, 0.44, 0.26, 1.0], MARKER_COLOR = [0.31, 0.76, 0.97, 1.0];  // #ff7043, #4fc3f7 as in 2-D
let gl = null, lines = null, xrRef = null;
let immersive = null;  // the WebXR presentation while the page is in AR, else null

async function checkXR() {
  if (!window.isSecureContext) {  // browsers offer navigator.xr only to https and localhost pages
    state.xr.error = "AR needs https (a TLS proxy) or localhost";
  }
  try {
    state.xr.supported = !!(navigator.xr && await navigator.xr.isSessionSupported("immersive-ar"));
  } catch (err) { state.xr.supported = false; state.xr.error = String(err); }
  const button = document.getElementById("xr-button");
  button.hidden = !state.xr.supported;
  button.onclick = () => (immersive ? immersive.end() : enterXR());
}

function initLines(glc) {  // one flat-colour line program; a shader that does not build is an error, not a blank view
  const vs = "attribute vec3 p; uniform mat4 proj, view; void main(){ gl_Position = proj * view * vec4(p, 1.0); }";
  const fs = "precision mediump float; uniform vec4 color; void main(){ gl_FragColor = color; }";
  const shader = (type, src) => {
    const sh = glc.createShader(type);
    glc.shaderSource(sh, src); glc.compileShader(sh);
    if (!glc.getShaderParameter(sh, glc.COMPILE_STATUS)) throw new Error(`XR line shader: ${glc.getShaderInfoLog(sh)}`);
    return sh;
  };
  const prog = glc.createProgram();
  glc.attachShader(prog, shader(glc.VERTEX_SHADER, vs));
  glc.attachShader(prog, shader(glc.FRAGMENT_SHADER, fs));
  glc.linkProgram(prog);
  if (!glc.getProgramParameter(prog, glc.LINK_STATUS)) throw new Error(`XR line program: ${glc.getProgramInfoLog(prog)}`);
  lines = {
    prog, buffer: glc.createBuffer(), p: glc.getAttribLocation(prog, "p"), proj: glc.getUniformLocation(prog, "proj"),
    view: glc.getUniformLocation(prog, "view"), color: glc.getUniformLocation(prog, "color"),
  };
}

function drawLines(view, points, color) {  // points: Float32Array of segment end points, xyz xyz ...
  if (!points.length) return;
  gl.useProgram(lines.prog);
  gl.bindBuffer(gl.ARRAY_BUFFER, lines.buffer);
  gl.bufferData(gl.ARRAY_BUFFER, points, gl.DYNAMIC_DRAW);
  gl.enableVertexAttribArray(lines.p);
  gl.vertexAttribPointer(lines.p, 3, gl.FLOAT, false, 0, 0);
  gl.uniformMatrix4fv(lines.proj, false, view.projectionMatrix);
  gl.uniformMatrix4fv(lines.view, false, view.transform.inverse.matrix);
  gl.uniform4fv(lines.color, color);
  gl.drawArrays(gl.LINES, 0, points.length / 3);
}

const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];

function arrowLines(arrows, eye) {  // [{from, to}] -> segments: the shaft and two head strokes facing the eye
  const out = [];
  for (const { from, to } of arrows) {
    const d = [to[0] - from[0], to[1] - from[1], to[2] - from[2]], len = Math.hypot(...d);
    if (len < 1e-6) continue;
    const u = d.map((v) => v / len);
    let side = cross(u, [to[0] - eye[0], to[1] - eye[1], to[2] - eye[2]]), sn = Math.hypot(...side);
    if (sn < 1e-6) { side = cross(u, Math.abs(u[1]) > 0.9 ? [1, 0, 0] : [0, 1, 0]); sn = Math.hypot(...side); }
    side = side.map((v) => v / sn);
    const head = Math.min(0.02, 0.3 * len);
    out.push(...from, ...to);
    for (const s of [1, -1]) {
      out.push(...to, ...[0, 1, 2].map((k) => to[k] - head * u[k] + s * 0.5 * head * side[k]));
    }
  }
  return new Float32Array(out);
}

function xrArrows(fb, anchors) {  // [[arm, controller position]] -> force and marker arrows in the XR reference space
  const force = [], markers = [];
  const padsPerArm = fb.marker_offset ? fb.marker_offset.length / Math.max(1, fb.arms) : 0;
  for (const [arm, origin] of anchors) {
    if (fb.wrench && fb.wrench[arm] && fb.tcp_quat && fb.tcp_quat[arm]) {  // wrench is in the TCP frame
      const world = qrot(fb.tcp_quat[arm], fb.wrench[arm].slice(0, 3)), f = ROBOT_TO_XR(world);
      const to = origin.map((v, k) => v + XR_FORCE_M_PER_N * f[k]);
      force.push({ arm, from: origin, to, newtons: Math.hypot(...world) });
    }
    const grid = padsPerArm >= 1 ? fb.marker_offset[arm * padsPerArm] : null;  // the arm's first pad
    if (!grid) continue;
    const top = origin[1] + XR_PANEL_ABOVE_M + (grid.length - 1) * XR_MARKER_PITCH_M, left = (grid[0].length - 1) / 2;
    grid.forEach((row, r) => row.forEach((d, c) => {  // row 0 on top and +d[1] up, as the 2-D view draws them
      const mag = Math.hypot(d[0], d[1]);
      if (mag <= 0.005) return;
      const k = Math.min(XR_MARKER_MAX_M / mag, XR_MARKER_M_PER_MM);
      const from = [origin[0] + (c - left) * XR_MARKER_PITCH_M, top - r * XR_MARKER_PITCH_M, origin[2]];
      markers.push({ arm, from, to: [from[0] + d[0] * k, from[1] + d[1] * k, from[2]] });
    }));
  }
  return { force, markers };
}

function readControllers(frame) {  // hands from the controllers; [[arm, position]] of those tracked in this frame
  for (const h of state.hands) h.clutch = false;  // an untracked controller lets go of its clutch
  const anchors = [];
  for (const src of frame.session.inputSources) {
    const arm = XR_ARM_HANDS.indexOf(src.handedness);
    if (arm < 0 || arm >= state.arms || !src.gripSpace) continue;
    const pose = frame.getPose(src.gripSpace, xrRef);
    if (!pose) continue;
    const p = pose.transform.position, o = pose.transform.orientation, h = state.hands[arm];
    h.pos = [p.x, p.y, p.z]; h.quat = [o.w, o.x, o.y, o.z];
    const buttons = src.gamepad ? src.gamepad.buttons : [];
    h.grip = buttons[0] ? buttons[0].value : h.grip;       // trigger closes the gripper
    h.clutch = buttons[1] ? buttons[1].pressed : false;    // squeeze holds the clutch
    anchors.push([arm, h.pos]);
  }
  return anchors;
}

function drawXR(frame, anchors) {
  const layer = frame.session.renderState.baseLayer, viewer = frame.getViewerPose(xrRef);
  gl.bindFramebuffer(gl.FRAMEBUFFER, layer.framebuffer);
  gl.clearColor(0, 0, 0, 0); gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  const arrows = viewer && state.feedback ? xrArrows(state.feedback, anchors) : { force: [], markers: [] };
  const eye = viewer ? [viewer.transform.position.x, viewer.transform.position.y, viewer.transform.position.z] : [0, 0, 0];
  const force = arrowLines(arrows.force, eye), markers = arrowLines(arrows.markers, eye);
  const views = viewer && state.feedback ? viewer.views : [];
  for (const v of views) {
    const vp = layer.getViewport(v);
    gl.viewport(vp.x, vp.y, vp.width, vp.height);
    drawLines(v, force, FORCE_COLOR);
    drawLines(v, markers, MARKER_COLOR);
  }
  state.xr.drawn = {
    frame: state.xr.frames, views: views.length, markerArrows: arrows.markers.length,
    force: arrows.force.map(({ arm, from, to, newtons }) => ({
      arm, from, to, newtons, length_m: Math.hypot(to[0] - from[0], to[1] - from[1], to[2] - from[2]),
    })),
  };
}

function onXRFrame(t, frame) {
  frame.session.requestAnimationFrame(onXRFrame);
  state.xr.frames += 1;
  try {
    const anchors = readControllers(frame);
    sendPoses("xr");
    drawXR(frame, anchors);
  } catch (err) { state.errors.push(String(err)); }
}

function onXREnd() {
  immersive = null; state.mode = "fallback"; state.xr.active = false;
  document.getElementById("xr-button").textContent = "Enter AR";
}

async function enterXR() {
  let ar = null;
  try {
    ar = await navigator.xr.requestSession("immersive-ar", {
      optionalFeatures: ["local-floor", "dom-overlay"], domOverlay: { root: document.body },
    });
    immersive = ar;
    ar.addEventListener("end", onXREnd);
    const canvas = document.getElementById("xr-canvas");
    gl = canvas.getContext("webgl", { xrCompatible: true, alpha: true });
    if (!gl) throw new Error("no WebGL context for the XR layer");
    await gl.makeXRCompatible();
    initLines(gl);
    ar.updateRenderState({ baseLayer: new XRWebGLLayer(ar, gl) });
    xrRef = await ar.requestReferenceSpace("local-floor").catch(() => ar.requestReferenceSpace("local"));
    state.mode = "xr"; state.xr.active = true;
    document.getElementById("xr-button").textContent = "Exit AR";
    ar.requestAnimationFrame(onXRFrame);
  } catch (err) {
    state.xr.error = String(err); state.errors.push(String(err));
    if (ar) ar.end().catch(() => {});  // never leave the operator in an immersive view that draws nothing
  }
}

// ------------------------------------------------------------------------------------------- start
state.XR_TO_ROBOT = XR_TO_ROBOT;
connect();
checkXR();
setInterval(fallbackTick, 1000 / SEND_HZ);
