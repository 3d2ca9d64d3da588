"""Run a flow as a Telegram bot: ``python -m frontends.telegram`` (or ``weather-bot``).

The package, one concern a module:

``texts``       what the bot says of its own (notices, command replies, ``/help``)
``config``      the token and Bot API URL from the environment; the options
``logs``        logging, with the token masked in every record
``api``         the Bot API as the outbox needs it; failures classified
``http``        the transport under pyTelegramBotAPI (urllib3 directly)
``sending``     the outbox: ordered, paced, retried sending
``routing``     conversation keys, where replies go, open questions and buttons
``frontend``    :class:`TelegramFrontend`, what the engine calls
``updates``     the handlers that turn updates into engine events
``polling``     long polling, confirming updates once journaled
``program``     :class:`Bot`, which wires them together, and :func:`main`

Threads, and what each may do:

``telegram-polling``
    Long polling (``getUpdates``) and the handlers of ``updates``, which run
    here, one update at a time, in update order. Handlers only hand updates
    to the scheduler (``begin``/``send``/``cancel``) or queue an answer in
    the outbox; no flow code runs here. Updates are confirmed to Telegram
    once the scheduler has journaled them (it says so after each commit).
    Daemon: when stopping, a long poll in flight is abandoned, which loses
    nothing (updates are confirmed by the next poll).
``engine-scheduler`` and ``engine-worker-N``
    The engine (``engine.scheduler``). It calls :class:`TelegramFrontend`,
    which only queues work in the outbox.
``telegram-sender-N`` and ``telegram-sender-answers``
    The outbox (``frontends.telegram.sending``): every Bot API call that
    sends, in order per chat, paced and retried. Any free sender takes the
    next chat due, one request per chat at a time; button answers go first,
    and have a sender of their own.

Every Bot API call pyTelegramBotAPI makes travels on ``frontends.telegram.http``
(urllib3 directly: a quarter of ``requests``' CPU per call).

Configuration comes from the environment (``TELEGRAM_BOT_TOKEN``,
``TELEGRAM_API_URL``, ...) and the options; see ``--help``. The token is
never written anywhere: a filter on the log handlers masks it, including in
the URLs that ``requests`` puts into its exceptions.
"""

from frontends.telegram.program import main

__all__ = ["main"]
