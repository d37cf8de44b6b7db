"""CMPv2 (RFC 4210, RFC 9480, the lightweight profile RFC 9483) over HTTP (RFC 6712): the CA's responder and
the router's client. :mod:`.messages` is the wire format, :mod:`.server` the CA side, :mod:`.client` the router's.
"""

from .messages import CONTENT_TYPE, CmpError, CmpFailure, CmpFormatError, FailInfo, PkiStatus

__all__ = ["CONTENT_TYPE", "CmpError", "CmpFailure", "CmpFormatError", "FailInfo", "PkiStatus"]
