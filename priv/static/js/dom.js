// The two DOM helpers both pages build their markup with.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/**
 * A new `tag` element: `props` are set as properties, except `class`, `dataset`, `role` and
 * `aria-*`, which go where the DOM keeps them; `children` (nodes or text) are appended, nulls
 * skipped.
 */
export const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
};
