# shapegate: Varnish as the caching, request-collapsing tier between shape-proxy and the
# engine (the nginx config in config/nginx/ is the tested one; see docs/cdn.md).
#
#   varnishd -F -a 127.0.0.1:3002 -f $PWD/config/varnish/shapegate.vcl -n $DIR/work \
#     -s malloc,256m -p first_byte_timeout=90 -p between_bytes_timeout=90 \
#     -p vsl_mask=-ReqURL,-BereqURL
#
# The proxy puts the engine `secret` in every URL. Varnish's shared-memory log records each
# request's URL as it arrives (ReqURL, before any VCL runs) and as sent to the engine
# (BereqURL), where `varnishlog -n $DIR/work` and varnishncsa's default format (`%r`) show it:
# `vsl_mask=-ReqURL,-BereqURL` keeps both out, and vcl_recv below logs the URL with the
# secret's value replaced (VCL_Log `url:`), for `varnishncsa -F '... %{VCL_Log:url}x ...'`.
# Keep $DIR/work private to the user running varnishd all the same (docs/cdn.md section 2).
#
# Edit the backend address below to point at the engine.
vcl 4.1;
import std;

backend engine {
    .host = "127.0.0.1";
    .port = "3000";
    .connect_timeout = 5s;
    .first_byte_timeout = 90s;       # > the 20 s long-poll hold
    .between_bytes_timeout = 90s;    # > the 21 s SSE keep-alive gap
}

sub vcl_recv {
    # The URL for the logs, without the engine secret (see the header: ReqURL is masked).
    std.log("url: " + regsuball(req.url, "([?&]secret=)[^&]*", "\1[REDACTED]"));
    # A shared tier never sees user credentials: the proxy already put their effect in the URL.
    unset req.http.Authorization;
    unset req.http.Cookie;
    if (req.url !~ "^/v1/shape(\?|$)") {
        return (pass);
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);               # POST subsets, DELETE, OPTIONS
    }
    if (req.url ~ "[?&]live=true(&|$)" && req.url ~ "[?&]live_sse=true(&|$)") {
        return (pipe);               # SSE: streamed as is, never cached, never collapsed
    }
    if (req.url !~ "[?&]live=true(&|$)" && req.url ~ "[?&]cursor=") {
        # A stream's refresh (forceDisconnectAndRefresh, a resume after pause): a catch-up
        # that must reach the engine, not the stream's cached catch-up (as config/nginx's
        # $shapegate_refresh).
        return (pass);
    }
    # Canonical key: sort the query string, drop nothing (every parameter matters).
    set req.url = std.querysort(req.url);
    return (hash);
}

sub vcl_pipe {
    set bereq.http.Connection = "close";
}

sub vcl_hash {
    hash_data(req.url);              # path + full query string; no Host, no cookies
    return (lookup);
}

sub vcl_backend_fetch {
    # A subset snapshot (a POST, or a GET with `subset__*`) is answered only once its query
    # has ended, after up to the engine's --snapshot-timeout (300 s by default): waited for
    # 310 s, as shape-proxy waits (the backend's 90 s made a slow subset Varnish's 503).
    if (bereq.method == "POST" || bereq.url ~ "[?&]subset__") {
        set bereq.first_byte_timeout = 310s;
        set bereq.between_bytes_timeout = 310s;
    }
}

sub vcl_backend_response {
    # Only these statuses are ever stored; the engine's cache-control sets their TTLs
    # (Varnish reads s-maxage / max-age / stale-while-revalidate itself).
    if (beresp.status != 200 && beresp.status != 304 && beresp.status != 409) {
        set beresp.uncacheable = true;
        set beresp.ttl = 5s;         # hit-for-miss: later requests go straight through
        return (deliver);
    }
    if (beresp.http.Cache-Control ~ "(no-store|no-cache|private)") {
        set beresp.uncacheable = true;
        set beresp.ttl = 5s;
        return (deliver);
    }
    return (deliver);
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache-Status = "HIT";
    } else {
        set resp.http.X-Cache-Status = "MISS";
    }
}
