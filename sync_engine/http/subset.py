"""A subset snapshot's response (`subset__*` params or a POST body): JSON rows and metadata.

The query itself is `snapshot/subset.py`; the metadata carries its snapshot, so the client
can drop live changes it already saw in the subset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from ..errors import ShapeGone
from ..snapshot.subset import SubsetQuery, run_subset
from .live import client_gone

if TYPE_CHECKING:
    from ..shapes.shape import Shape
    from ..source import Source
    from .params import ShapeRequest


async def serve_subset(
    source: Source,
    shape: Shape,
    req: ShapeRequest,
    subset: SubsetQuery,
    request: web.Request | None = None,
) -> web.StreamResponse:
    """The subset's answer; `request`, when given, is watched for its client leaving, which
    abandons the query in Postgres (`run_subset`)."""
    if req.handle is not None and req.handle != shape.handle:
        raise ShapeGone(shape.handle)
    gone = None if request is None else client_gone(request)
    result = await run_subset(source, shape, subset, gone)
    snapshot = result.snapshot
    body = {
        "metadata": {
            "xmin": str(snapshot.xmin),
            "xmax": str(snapshot.xmax),
            "xip_list": [str(x) for x in sorted(snapshot.xip)],
            "database_lsn": str(result.lsn),
            "snapshot_mark": result.mark,
        },
        "data": result.messages,
    }
    offset = req.offset if req.offset is not None and not req.offset.is_before_all else None
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers={
            "cache-control": "no-cache",
            "electric-snapshot": "true",
            "electric-handle": shape.handle,
            "electric-schema": shape.schema_json,
            "electric-offset": str(offset if offset is not None else shape.log.latest_offset),
        },
    )
