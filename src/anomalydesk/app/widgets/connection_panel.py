"""Connection panel: URL, TLS, user/password; live connection state, server facts, self-monitoring."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from PySide6 import QtWidgets

from anomalydesk.app.model import settings as settings_mod
from anomalydesk.app.model.settings import AppSettings
from anomalydesk.app.model.state import AppState
from anomalydesk.app.widgets.message_label import wrapping
from anomalydesk.store.connection import ConnectionFailed, cluster_mode, parse_url

STATUS_COLOUR = {"connected": "#2e8b57", "connecting": "#b8860b", "reconnecting": "#d2691e",
                 "failed": "#c0392b", "disconnected": "#777777"}  # fmt: skip


def build_url(url: str, tls: bool, user: str, password: str) -> str:
    """Fold the form's TLS flag and credentials into a Redis URL."""
    if not url:
        return ""
    parts = urlsplit(url if "://" in url else f"redis://{url}")
    scheme = "rediss" if tls and parts.scheme == "redis" else parts.scheme
    host = parts.netloc.rpartition("@")[2]
    creds = ""
    if user or password:
        creds = f"{quote(user, safe='')}:{quote(password, safe='')}@" if password else f"{quote(user, safe='')}@"
    return parts._replace(scheme=scheme, netloc=creds + host).geturl()


class ConnectionPanel(QtWidgets.QWidget):
    """Shows `state.connection`; Apply saves the form and asks the app to reconnect."""

    def __init__(self, state: AppState, settings: AppSettings, reconnect: Callable[[], Any],
                 parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.state = state
        self.settings = settings
        self.reconnect = reconnect
        self.url = QtWidgets.QLineEdit(settings.redis_url, placeholderText="empty: the embedded server")
        self.tls = QtWidgets.QCheckBox("TLS (rediss://)")
        self.tls.setChecked(settings.tls)
        self.user = QtWidgets.QLineEdit(settings.username)
        self.password = QtWidgets.QLineEdit()
        self.password.setEchoMode(QtWidgets.QLineEdit.EchoMode.Password)
        self.password.setPlaceholderText(settings_mod.password_placeholder())  # the note below says the same
        self.apply_button = QtWidgets.QPushButton("Apply and reconnect")
        self.apply_button.clicked.connect(self.apply)
        form = QtWidgets.QFormLayout()
        form.addRow("Redis URL", self.url)
        form.addRow("", self.tls)
        form.addRow("User", self.user)
        form.addRow("Password", self.password)
        form.addRow("", self.apply_button)
        self.form_error = wrapping(QtWidgets.QLabel())  # a URL that cannot be used is refused here, before reconnecting
        self.form_error.setStyleSheet("color: #c0392b")
        form.addRow("", self.form_error)

        self.status = wrapping(QtWidgets.QLabel())
        self.reason = wrapping(QtWidgets.QLabel())
        self.facts = wrapping(QtWidgets.QLabel())
        self.warnings = wrapping(QtWidgets.QLabel())
        self.secrets = wrapping(QtWidgets.QLabel(f"Passwords: {settings_mod.secret_store_description()}"))
        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        for w in (self.status, self.reason, self.facts, self.warnings, self.secrets):
            layout.addWidget(w)
        layout.addStretch(1)
        state.connection.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Show `state.connection`."""
        c = self.state.connection
        colour = STATUS_COLOUR.get(c.status, "#777777")
        self.status.setText(f"<b style='color:{colour}'>{c.status}</b> — {c.url or '…'}")
        retrying = c.status in ("reconnecting", "failed")
        retry = f" (attempt {c.attempts}, next in {c.next_retry_s:.1f} s)" if retrying else ""
        self.reason.setText(f"{c.reason}{retry}" if c.reason else "")
        if c.status != "connected":
            # memory, detector and counts were the server's as it last answered: while (re)connecting they
            # would be another server's or out of date, so none are shown until it answers again
            self.facts.setText("server facts appear once connected" if c.status != "disconnected" else "")
            self.warnings.setText("")
            return
        s = c.status_json
        facts = [f"Redis {c.server_version}" if c.server_version else "",
                 f"sketches: {c.sketch_backend}" if c.sketch_backend else "",
                 f"memory {c.used_memory / 1e6:.1f} MB" if c.used_memory else "",
                 f"detector: {c.detector or 'none'}",
                 f"{len(s.get('services', []))} services, {s.get('fingerprints', 0):,} fingerprints, "
                 f"{s.get('incidents_open', 0)} open incidents" if s else ""]  # fmt: skip
        self.facts.setText(" · ".join(f for f in facts if f))
        self.warnings.setText("".join(f"<p style='color:#c0392b'>⚠ {w}</p>" for w in c.warnings))

    def apply(self) -> None:
        """Check the form, save URL/TLS/user (password to the keyring) and reconnect.

        A URL the client cannot use (bad scheme, TLS options without TLS, …) is refused with the reason
        and nothing changes: the app stays on its current server.
        """
        url = self.url.text().strip()
        if url:
            try:
                candidate = build_url(url, self.tls.isChecked(), self.user.text().strip(), "")
                parse_url(candidate)
                cluster_mode(candidate)
            except ConnectionFailed as err:
                self.form_error.setText(f"not applied: {err.reason}")
                return
        self.form_error.setText("")
        self.settings.redis_url = url
        self.settings.tls = self.tls.isChecked()
        self.settings.username = self.user.text().strip()
        if self.password.text():
            where = settings_mod.set_password(self.account(), self.password.text())
            self.secrets.setText(f"Password saved: {where}")
            self.password.clear()
        self.reconnect()

    def account(self) -> str:
        """The keyring account name for the configured server."""
        return f"{self.settings.username or 'default'}@{self.settings.redis_url}"
