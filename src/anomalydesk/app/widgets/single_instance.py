"""One app per user: the first instance listens on a QLocalServer; a second launch asks it to show itself."""

from __future__ import annotations

import getpass
import hashlib
import logging

from PySide6 import QtCore, QtNetwork

from anomalydesk import config

ACTIVATE = b"activate\n"
log = logging.getLogger(__name__)


def server_name() -> str:
    """A per-user (and per config dir, so tests do not collide) socket name."""
    digest = hashlib.sha1(str(config.config_dir()).encode()).hexdigest()[:10]
    return f"anomalydesk-{getpass.getuser()}-{digest}"


def notify_running(timeout_ms: int = 500) -> bool:
    """True when another instance answered (and was told to come to the front)."""
    socket = QtNetwork.QLocalSocket()
    socket.connectToServer(server_name())
    if not socket.waitForConnected(timeout_ms):
        return False
    socket.write(ACTIVATE)
    socket.waitForBytesWritten(timeout_ms)
    socket.disconnectFromServer()
    return True


class InstanceServer(QtCore.QObject):
    """Listens for later launches; emits `activate` when one knocks."""

    activate = QtCore.Signal()

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.server = QtNetwork.QLocalServer(self)
        self.server.newConnection.connect(self._connection)
        self._sockets: list[QtNetwork.QLocalSocket] = []

    def listen(self) -> bool:
        """Start listening (removing a stale socket left by a crash)."""
        name = server_name()
        listening = self.server.listen(name)
        if not listening:
            QtNetwork.QLocalServer.removeServer(name)
            listening = self.server.listen(name)
        if listening:
            log.info("single instance: listening for later launches on %s", self.server.fullServerName())
        else:
            log.warning("single instance: cannot listen on %s: %s", name, self.server.errorString())
        return listening

    def _connection(self) -> None:
        while self.server.hasPendingConnections():
            socket = self.server.nextPendingConnection()  # owned (and deleted) by the server
            self._sockets.append(socket)
            socket.readyRead.connect(self._read)
            if socket.bytesAvailable():
                self._read()

    def _read(self) -> None:
        for socket in list(self._sockets):
            if socket.bytesAvailable() and bytes(socket.readAll().data()).startswith(ACTIVATE.strip()):
                log.info("single instance: a second launch asked this one to come to the front")
                self.activate.emit()
        connected = QtNetwork.QLocalSocket.LocalSocketState.ConnectedState
        self._sockets = [s for s in self._sockets if s.state() == connected]

    def close(self) -> None:
        """Stop listening."""
        self._sockets.clear()
        self.server.close()
