"""POST /uploads: reserve an upload directory for rsync, maybe over a kept base."""

from __future__ import annotations

import os

from flask import Blueprint, Response, jsonify, request

from .. import ids, validate
from ..job_files import DIR_MODE
from . import engine

bp = Blueprint("uploads", __name__)


@bp.post("/uploads")
def create_upload() -> tuple[Response, int]:
    basis = validate.upload_basis(validate.json_body(request.get_data(cache=False), optional=True))
    eng = engine()
    cfg, store = eng.config, eng.store
    link_dest = None
    if basis:
        previous = store.get_upload(basis)
        if (
            previous
            and previous["state"] == "used"
            and not previous["base_deleted"]
            and eng.files.base_dir(basis).is_dir()
        ):
            link_dest = f"../.bases/{basis}/"
        else:
            basis = None  # no usable base: an ordinary full upload
    upload_id = ids.new_upload_id()
    cfg.uploads_dir.mkdir(parents=True, exist_ok=True)
    path = eng.files.upload_dir(upload_id)
    path.mkdir()
    os.chmod(path, DIR_MODE)
    store.add_upload(upload_id, basis)
    answer = {"upload_id": upload_id, "rsync_url": f"{cfg.rsync_url.rstrip('/')}/{upload_id}/"}
    if link_dest:
        answer["link_dest"] = link_dest
    return jsonify(answer), 201
