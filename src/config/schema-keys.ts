/**
 * Facts derived from the zod schema itself, so that no list of configuration keys is kept by hand
 * beside it (a forgotten entry in such a list fails silently).
 */
import type { z } from 'zod';

interface Def {
  type: string;
  shape?: Record<string, z.ZodType>;
  innerType?: z.ZodType;
  element?: z.ZodType;
  valueType?: z.ZodType;
  options?: z.ZodType[];
  left?: z.ZodType;
  right?: z.ZodType;
  in?: z.ZodType;
  out?: z.ZodType;
}

const defOf = (s: z.ZodType): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

/** Every object key that appears anywhere in the schema (camelCase, as the file spells them). */
export function schemaKeys(schema: z.ZodType): string[] {
  const out = new Set<string>();
  const seen = new Set<z.ZodType>();
  const walk = (s: z.ZodType | undefined): void => {
    if (!s || seen.has(s)) return;
    seen.add(s);
    const d = defOf(s);
    switch (d.type) {
      case 'object':
        for (const [k, v] of Object.entries(d.shape ?? {})) {
          out.add(k);
          walk(v);
        }
        return;
      case 'array':
        return walk(d.element);
      case 'record':
        return walk(d.valueType);
      case 'union':
        return d.options?.forEach(walk);
      case 'intersection':
        walk(d.left);
        return walk(d.right);
      case 'pipe':
        walk(d.in);
        return walk(d.out);
      default:
        // optional, nullable, default, prefault, readonly, catch, nonoptional...: one inner type.
        return walk(d.innerType);
    }
  };
  walk(schema);
  return [...out];
}
