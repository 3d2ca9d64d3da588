"""The bot's logging: one stderr handler, with the token masked in every record."""

from __future__ import annotations

import logging
import sys
import threading
import types as pytypes

import telebot

from frontends.programs import log_to_stderr
from frontends.telegram.config import PROGRAM


class Redactor(logging.Filter):
    """Masks secrets in every record passing a handler (message, args, traceback)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        bot_id, _, secret = token.partition(":")
        self._replacements = [(token, f"{bot_id}:<token>")]
        self._replacements.append((token.replace(":", "%3A"), f"{bot_id}%3A<token>"))
        if secret:
            self._replacements.append((secret, "<token>"))

    def redact(self, text: str) -> str:
        for secret, mask in self._replacements:
            if secret in text:
                text = text.replace(secret, mask)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what can be kept
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def setup_logging(verbose: bool, redactor: Redactor) -> None:
    """One stderr handler, masked by `redactor`; uncaught exceptions go through it too."""
    log_to_stderr(logging.DEBUG if verbose else logging.INFO, filters=[redactor])
    # pyTelegramBotAPI gives its logger a handler of its own, which the filter
    # would not see: let its records reach the root handler instead.
    telebot.logger.handlers.clear()
    telebot.logger.propagate = True
    telebot.logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.DEBUG if verbose else logging.WARNING)

    def uncaught(
        kind: type[BaseException], error: BaseException, tb: pytypes.TracebackType | None
    ) -> None:
        logging.getLogger(PROGRAM).critical("uncaught exception", exc_info=(kind, error, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None:
            return
        name = args.thread.name if args.thread else "?"
        logging.getLogger(PROGRAM).critical(
            "uncaught exception in thread %s",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread
