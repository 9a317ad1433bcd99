"""How an object store's failures reach the user: typed, naming the bucket, the key and the
endpoint, never a credential.

An endpoint that cannot be reached (refused, timed out, a 5xx) is retryable; a missing bucket, a
refused access or a request the store calls wrong (a 400, a bucket in another region) is a
ConfigError, because a retry finds the same. The clients say which in words
(obstore's and Polars' readers both wrap the Rust object_store crate), so the words are read here,
in one place, from the error's first line, never from its debug dump (which may quote request
headers).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from starsmith.errors import ConfigError, RetryableError, StarsmithError

if TYPE_CHECKING:
    from starsmith.loaders.store import ObjectPath

_DENIED = ("403 forbidden", "401 unauthorized", "accessdenied", "access denied",
           "invalidaccesskeyid", "signaturedoesnotmatch", "permission", "invalid_grant",
           "expiredtoken", "unauthorized")
_REFUSED = ("400 bad request", "301 moved permanently", "permanentredirect",
            "invalidbucketname", "authorizationheadermalformed", "invalidrequest",
            "invalidargument", "405 method not allowed")
_UNREACHABLE = ("error sending request", "connect", "timed out", "timeout", "dns error",
                "connection", "500 internal", "502 bad gateway", "503 service", "504 gateway",
                "slowdown")


def store_error(err: BaseException, path: ObjectPath | None = None) -> StarsmithError | None:
    """An object store failure (obstore's or Polars' reader's) as a typed error naming the
    bucket, the key or the endpoint and never a credential; None when ``err`` is not one."""
    text = str(err)
    low = text.lower()
    url = next(iter(re.findall(r"https?://[^\s,)]+", text)), "")
    url = re.sub(r"//[^/@\s]*@", "//", url.split("?")[0])  # no user:password, no query
    where = str(path) if path is not None else (url or "the landing zone's object store")
    bucket = path.bucket if path is not None else _bucket_of(text)
    if "nosuchbucket" in low or "bucket does not exist" in low or "no bucket named" in low \
            or ("404" in low and "list" in low and path is not None and not path.key):
        return ConfigError(f"the bucket {bucket!r} does not exist (or this endpoint does not "
                           "have it)", where=where,
                           fix="Create the bucket, or point the project's `landing` (or "
                               "STARSMITH_LANDING) at s3://BUCKET/PREFIX or gs://BUCKET/PREFIX "
                               "of one that exists")
    if any(t in low for t in _DENIED):
        return ConfigError(f"access to the bucket {bucket!r} was refused", where=where,
                           fix="Give the credentials starsmith finds (the AWS_* or GOOGLE_* "
                               "environment, the instance's role) read access to it (and write "
                               "access to land data); a retry alone will not help")
    if any(t in low for t in _REFUSED):  # the request itself is wrong: a retry sends it again
        return ConfigError(f"the object store refused the request for the bucket {bucket!r} "
                           f"({reason(text)})", where=where,
                           fix="Check the bucket's name and region (AWS_REGION) and the "
                               "endpoint (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST)")
    if any(t in low for t in _UNREACHABLE) or ("generic" in low and "error" in low):
        return RetryableError(f"the object store{f' at {url}' if url else ''} could not be "
                              f"reached or failed ({reason(text)})", where=where,
                              fix="Check the endpoint (AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST) "
                                  "and the network; it is retried")
    return None


_CLOUD = ("s3://", "gs://", "generic s3 error", "generic gcs error", "error performing",
          "object_store", "object store")


def cloud_error(err: BaseException) -> StarsmithError | None:
    """A failure of Polars' cloud reader (or obstore's) met while a step read an object store
    landing, typed as :func:`store_error` does; None for any other error."""
    if isinstance(err, StarsmithError | FileNotFoundError):
        return None
    low = str(err).lower()
    if not any(m in low for m in _CLOUD):
        return None
    return store_error(err)


def _bucket_of(text: str) -> str:
    found = re.search(r"(?:s3|gs)://([^/\s]+)", text) or re.search(
        r"<BucketName>([^<]+)</BucketName>", text)
    return found.group(1) if found else "?"


def reason(text: str) -> str:
    """The error's gist: its first line without the client's debug dump (which may repeat
    request headers), and without any URL's user part."""
    first = text.split("Debug source", 1)[0].strip().splitlines()
    gist = first[0] if first else "unknown error"
    gist = re.sub(r"//[^/@\s]*@", "//", gist)
    return gist[:300]
