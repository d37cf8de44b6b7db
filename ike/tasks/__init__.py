"""One task per exchange concern, as strongSwan cuts them (sa/ikev2/tasks/).

``build`` adds a concern's payloads to an outgoing message, ``process`` reads them from an incoming one; the
exchange initiator builds then processes, the responder processes then builds. Tasks never send, never read a
clock and never touch message IDs: ``ike.exchange.TaskManager`` does, and decides which tasks run for each
exchange type and role.
"""
from .base import ChildTask, RetryExchange, Task, TaskStatus
from .cert_post import CertPost
from .cert_pre import CertPre
from .child_create import ChildCreate
from .child_delete import ChildDelete
from .child_rekey import ChildRekey
from .dpd import Dpd, Informational
from .ike_auth import IkeAuth
from .ike_delete import IkeDelete
from .ike_init import IkeInit
from .ike_rekey import IkeRekey
from .natd import Natd

__all__ = ["Task", "ChildTask", "TaskStatus", "RetryExchange", "IkeInit", "Natd", "CertPre", "IkeAuth", "CertPost",
           "ChildCreate", "ChildRekey", "ChildDelete", "IkeRekey", "IkeDelete", "Dpd", "Informational"]
