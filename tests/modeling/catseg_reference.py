"""Hand-written reference computations of the aggregator parts (``docs/architecture.md``).

Written from the official computation with explicit loops over images, classes, windows and locations,
reading only the parameters of the modules under test (never calling their forward).
Used by several test modules of tests/modeling.
"""
import math

import torch
import torch.nn.functional as F


def layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def linear(x, weight, bias=None):
    y = x @ weight.T
    return y + bias if bias is not None else y


def gelu_exact(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


# --------------------------------------------------------------------------- class aggregation
def linear_attention(q, k, v):
    """Official linear attention per head, q/k/v ``[S, d]``: elu+1 features, KV/S, Z with eps 1e-6, times S."""
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    s = v.shape[0]
    kv = phi_k.T @ (v / s)
    z = 1.0 / (phi_q @ phi_k.sum(0) + 1e-6)
    return (phi_q @ kv) * z[:, None] * s


def full_attention(q, k, v):
    return torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1) @ v


ATTENTION = {"linear": linear_attention, "full": full_attention}


def class_layer(layer, x, g, pooling, attention, heads, quirk=True):
    """Class block: pool, pad to pad_len, per-location transformer over classes, upsample
    (bilinear, align_corners=True), residual ``x + up(z)`` (the official residual: z contains the pooled input)."""
    b, d, t, h, w = x.shape
    ph, pw = h // pooling[0], w // pooling[1]
    out = torch.empty_like(x)
    pad = layer.pad_len - t if layer.pad_len > t else 0
    hd = d // heads
    for bi in range(b):
        pooled = torch.zeros(d, t, ph, pw)
        for i in range(ph):
            for j in range(pw):
                win = x[bi, :, :, i * pooling[0]:(i + 1) * pooling[0], j * pooling[1]:(j + 1) * pooling[1]]
                pooled[:, :, i, j] = win.mean(dim=(-1, -2))
        guid = g[bi]
        if pad:
            guid = torch.cat([guid, layer.padding_guidance[0].expand(pad, guid.shape[-1])])
        z_all = torch.zeros(d, t, ph, pw)
        for i in range(ph):
            for j in range(pw):
                z = pooled[:, :, i, j].T  # [t, d]
                if pad:
                    z = torch.cat([z, layer.padding_tokens[0].expand(pad, d)])
                n1 = layer_norm(z, layer.norm1)
                cat = torch.cat([n1, guid], dim=-1)
                q = linear(cat, layer.attn.q.weight, layer.attn.q.bias)
                k = linear(cat, layer.attn.k.weight, layer.attn.k.bias)
                v = linear(n1, layer.attn.v.weight, layer.attn.v.bias)
                a = torch.cat([attention(q[:, s:s + hd], k[:, s:s + hd], v[:, s:s + hd]) for s in range(0, d, hd)], -1)
                upd = z + a
                upd = upd + linear(torch.relu(linear(layer_norm(upd, layer.norm2), layer.mlp[0].weight,
                                                     layer.mlp[0].bias)), layer.mlp[2].weight, layer.mlp[2].bias)
                z_all[:, :, i, j] = (upd if quirk else upd - z)[:t].T
        if (ph, pw) != (h, w):
            z_all = F.interpolate(z_all.reshape(1, d * t, ph, pw), size=(h, w), mode="bilinear", align_corners=True)
            z_all = z_all.reshape(d, t, h, w)
        out[bi] = x[bi] + z_all
    return out


# --------------------------------------------------------------------------- spatial aggregation
def _region(coord, size, window, shift):
    """Swin region id along one axis of the rolled map: [0, size-window), [size-window, size-shift), rest."""
    if coord < size - window:
        return 0
    if coord < size - shift:
        return 1
    return 2


def swin_block(block, x, g, heads, window, shift):
    """One Swin block on ``x [T, H, W, D]`` of one image with normed guidance ``g [H, W, G]``."""
    t, h, w, d = x.shape
    if min(h, w) <= window:  # Swin's rule for small maps
        window, shift = min(h, w), 0
    hd = d // heads
    xn = layer_norm(x, block.norm1)
    if shift:
        xn = torch.roll(xn, shifts=(-shift, -shift), dims=(1, 2))
        g = torch.roll(g, shifts=(-shift, -shift), dims=(0, 1))
    out = torch.zeros_like(x)
    attn = block.attn
    for wi in range(h // window):
        for wj in range(w // window):
            pos = [(wi * window + r, wj * window + c) for r in range(window) for c in range(window)]
            rows = torch.tensor([p[0] for p in pos])
            cols = torch.tensor([p[1] for p in pos])
            mask = torch.zeros(len(pos), len(pos))
            if shift:
                ids = [3 * _region(r, h, window, shift) + _region(c, w, window, shift) for r, c in pos]
                for a in range(len(pos)):
                    for b in range(len(pos)):
                        if ids[a] != ids[b]:
                            mask[a, b] = -100.0
            gw = g[rows, cols]
            for ti in range(t):
                xw = xn[ti, rows, cols]
                cat = torch.cat([xw, gw], dim=-1)
                q = linear(cat, attn.q.weight, attn.q.bias)
                k = linear(cat, attn.k.weight, attn.k.bias)
                v = linear(xw, attn.v.weight, attn.v.bias)
                o = []
                for s in range(0, d, hd):
                    logits = (q[:, s:s + hd] * hd ** -0.5) @ k[:, s:s + hd].T + mask
                    o.append(torch.softmax(logits, dim=-1) @ v[:, s:s + hd])
                out[ti, rows, cols] = linear(torch.cat(o, -1), attn.proj.weight, attn.proj.bias)
    if shift:
        out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
    x = x + out
    hidden = gelu_exact(linear(layer_norm(x, block.norm2), block.mlp.fc1.weight, block.mlp.fc1.bias))
    return x + linear(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias)


def spatial(module, x, guidance, heads, window):
    """SpatialAggregation: ``x [B, D, T, H, W]``, guidance ``[B, G, H, W]``; guidance normed once."""
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        xb = x[b].permute(1, 2, 3, 0)  # [T, H, W, D]
        g = layer_norm(guidance[b].permute(1, 2, 0), module.guidance_norm)
        xb = swin_block(module.block_1, xb, g, heads, window, 0)
        xb = swin_block(module.block_2, xb, g, heads, window, window // 2)
        out[b] = xb.permute(3, 0, 1, 2)
    return out


# --------------------------------------------------------------------------- decoder
def decoder(dec, x, guidance):
    """Per (image, class): up-conv, concat the image's guidance, DoubleConv (GN groups = C/16), head."""
    b, d, t, h, w = x.shape
    logits = []
    for bi in range(b):
        per_class = []
        for ti in range(t):
            y = x[bi, :, ti][None]
            for blk, g in zip(dec.blocks, guidance):
                y = F.conv_transpose2d(y, blk.up.weight, blk.up.bias, stride=2)
                y = torch.cat([y, g[bi:bi + 1]], dim=1)
                for conv, gn in ((blk.conv[0], blk.conv[1]), (blk.conv[3], blk.conv[4])):
                    y = F.conv2d(y, conv.weight, padding=1)
                    groups = max(y.shape[1] // 16, 1)
                    y = torch.relu(F.group_norm(y, groups, gn.weight, gn.bias, gn.eps))
            per_class.append(F.conv2d(y, dec.head.weight, dec.head.bias, padding=1)[0, 0])
        logits.append(torch.stack(per_class))
    return torch.stack(logits)


# --------------------------------------------------------------------------- whole aggregator
def aggregator(agg, img, text, decoder_guidance, pooling, heads, window, attention):
    """The official aggregator for ``img [B, C, H, W]`` (also the appearance guidance), ``text [T, P, C]``."""
    b = img.shape[0]
    num_classes = text.shape[0]
    img_n = F.normalize(img, dim=1)
    text_n = F.normalize(text, dim=-1)
    kept = [list(range(num_classes))] * b
    if agg.pad_len and num_classes > agg.pad_len:
        kept = []
        for bi in range(b):
            scores = torch.einsum("chw,tpc->tphw", img_n[bi], text_n).amax(dim=(1, 2, 3))
            kept.append(scores.topk(agg.pad_len).indices.tolist())
    texts = torch.stack([text_n[k] for k in kept])  # [B, T', P, C]
    cost = torch.einsum("bchw,btpc->bpthw", img_n, texts)
    t = cost.shape[2]
    embed = torch.stack([
        torch.stack([F.conv2d(cost[bi, :, ti][None], agg.cost_embed.weight, agg.cost_embed.bias, padding=3)[0]
                     for ti in range(t)], dim=1)
        for bi in range(b)
    ])  # [B, D, T', H, W]
    conv = agg.appearance_guidance_proj[0]
    app = torch.relu(F.conv2d(img, conv.weight, conv.bias, padding=1))
    lin = agg.text_guidance_proj[0]
    text_g = torch.relu(linear(F.normalize(texts.mean(dim=2), dim=-1), lin.weight, lin.bias))
    x = embed
    for layer in agg.layers:
        x = spatial(layer.spatial, x, app, heads, window)
        x = class_layer(layer.classes, x, text_g, pooling, attention, heads)
    dec_g = [torch.relu(F.conv2d(g, p[0].weight, p[0].bias, padding=1))
             for p, g in zip(agg.decoder_guidance_proj, decoder_guidance)]
    logits = decoder(agg.decoder, x, dec_g)
    out = torch.full((b, num_classes, *logits.shape[-2:]), -100.0)
    for bi in range(b):
        out[bi, kept[bi]] = logits[bi]
    return out
