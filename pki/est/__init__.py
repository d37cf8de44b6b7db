"""EST, Enrollment over Secure Transport (RFC 7030, with the RFC 8951 clarifications).

The CA side (:mod:`pki.est.server`: the responder, its TLS context and the service certificate) holds no HTTP;
``pki.service`` carries its bytes on a TLS listener beside the plain-HTTP one. The router side
(:mod:`pki.est.client`) is what ``local-certificate enroll --protocol est`` and ``ca-certificate enroll
--protocol est`` run. Unlike SCEP, EST moves a plain PKCS#10 request inside TLS, so any key type enrolls (RSA,
ECDSA, Ed25519).
"""

from .errors import EstError, EstPendingTimeout, EstRefused

__all__ = ["EstError", "EstPendingTimeout", "EstRefused"]
