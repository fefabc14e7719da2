"""The browser operator: a static page (``index.html`` + ``app.js``) and the HTTP/WebSocket server the teleop
node runs in a thread (``server.py``)."""
