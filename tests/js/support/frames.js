// Reads the raw frames recorded by support/client.js, to compare them with what Phoenix sends.

const utf8 = new TextDecoder();

/**
 * Decodes a V2 binary frame. Client pushes (kind 0, sent by us) have a 5-byte header with a ref;
 * server pushes (kind 0, received) have none, so the direction is needed to read kind 0.
 */
export function decodeBinary(bytes, dir) {
  const kind = bytes[0];
  let lengths;
  let names;
  if (kind === 0 && dir === "out") {
    lengths = bytes.slice(1, 5);
    names = ["join_ref", "ref", "topic", "event"];
  } else if (kind === 0) {
    lengths = bytes.slice(1, 4);
    names = ["join_ref", "topic", "event"];
  } else if (kind === 1) {
    lengths = bytes.slice(1, 5);
    names = ["join_ref", "ref", "topic", "status"];
  } else if (kind === 2) {
    lengths = bytes.slice(1, 3);
    names = ["topic", "event"];
  } else {
    throw new Error(`unknown binary frame kind ${kind}`);
  }
  const frame = { kind };
  let offset = 1 + lengths.length;
  names.forEach((name, i) => {
    frame[name] = utf8.decode(bytes.slice(offset, offset + lengths[i]));
    offset += lengths[i];
  });
  frame.payload = Array.from(bytes.slice(offset));
  return frame;
}

/** JSON frames `[join_ref, ref, topic, event, payload]` in one direction, optionally filtered. */
export function jsonFrames(socket, dir, { topic, event } = {}) {
  return socket.frames
    .filter((f) => f.dir === dir && Array.isArray(f.json))
    .map((f) => f.json)
    .filter((m) => (topic === undefined || m[2] === topic) && (event === undefined || m[3] === event));
}

export function binaryFrames(socket, dir) {
  return socket.frames.filter((f) => f.dir === dir && f.binary).map((f) => decodeBinary(f.binary, dir));
}
