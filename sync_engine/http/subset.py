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

if TYPE_CHECKING:
    from ..shapes.shape import Shape
    from ..source import Source
    from .params import ShapeRequest


async def serve_subset(
    source: Source, shape: Shape, req: ShapeRequest, subset: SubsetQuery
) -> web.StreamResponse:
    if req.handle is not None and req.handle != shape.handle:
        raise ShapeGone(shape.handle)
    result = await run_subset(source, shape, subset)
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
