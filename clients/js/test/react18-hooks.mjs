// The resolve hook of test/react18.mjs (runs on Node's loader thread).
const REACT18 = new URL('./react18/package.json', import.meta.url).href;
const MAPPED = /^(react|react-dom|@testing-library\/react)(\/.*)?$/;

export async function resolve(specifier, context, next) {
  if (MAPPED.test(specifier) && !context.parentURL?.includes('/test/react18/node_modules/')) {
    return next(specifier, { ...context, parentURL: REACT18 });
  }
  return next(specifier, context);
}
