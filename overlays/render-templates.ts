// Handlebars templates for the text files bramble writes (iPXE scripts, dnsmasq configs, networkd
// units, the OEM grub.cfg). One isolated Handlebars environment, no HTML escaping (none of these
// are HTML), strict lookups (a missing field is a bug, not an empty string), and every value
// checked to be a single line so no value can inject a directive into a line-based format.
import Handlebars from 'handlebars';
import { readFileSync } from 'node:fs';

export interface TemplateContexts {
  'boot.ipxe': {
    cluster: string;
    nodes: Array<{ name: string; mac: string; role: string }>;
    retryTimeoutMs: number;
    retrySeconds: number;
  };
  'node.ipxe': {
    name: string;
    role: string;
    mac: string;
    install: boolean;
    kernelUri: string;
    args: string;
    initrds: Array<{ name: string; uri: string }>;
    configInitrdName: string;
  };
  'dnsmasq.conf': DnsmasqContext;
  'dnsmasq-proxy.conf': DnsmasqContext;
  'networkd.network': {
    node: string;
    mac: string | null;
    names: string;
    dhcp: boolean;
    addresses: string[];
    gateway: string | null;
    dns: string[];
  };
  'oem-grub.cfg': { node: string; oemId: string | null; args: string };
  'installer.service': { node: string; disk: string; command: string; configPath: string; oemGrubCommand: string | null };
  'first-boot.service': { commands: string[]; stamp: string };
}

export interface DnsmasqContext {
  cluster: string;
  interface: string | null;
  subnet: string;
  network: string;
  netmask: string;
  range: { start: string; end: string } | null;
  gateway: string | null;
  dns: string | null;
  leaseTime: string;
  leases: Array<{ mac: string; ip: string | null; name: string }>;
  /** null: the tree has no iPXE binary for that client architecture, so it gets no boot line. */
  bootFiles: { bios: string | null; efi64: string | null; arm64: string | null };
  bootUrl: string;
  tftpRoot: string;
}

export type TemplateName = keyof TemplateContexts;

const env = Handlebars.create();
const compiled = new Map<TemplateName, Handlebars.TemplateDelegate>();

function templatePath(name: TemplateName): URL {
  return new URL(`./templates/${name}.hbs`, import.meta.url);
}

function assertSingleLine(value: unknown, where: string): void {
  if (typeof value === 'string') {
    if (/[\r\n\0]/.test(value)) throw new Error(`template value ${where} contains a line break: ${JSON.stringify(value)}`);
  } else if (Array.isArray(value)) {
    value.forEach((v, i) => assertSingleLine(v, `${where}[${i}]`));
  } else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) assertSingleLine(v, where ? `${where}.${k}` : k);
  }
}

/** Render one of overlays/templates/*.hbs with its typed context. */
export function renderTemplate<K extends TemplateName>(name: K, context: TemplateContexts[K]): string {
  assertSingleLine(context, '');
  let template = compiled.get(name);
  if (!template) {
    template = env.compile(readFileSync(templatePath(name), 'utf8'), { noEscape: true, strict: true });
    compiled.set(name, template);
  }
  return template(context);
}
