// A Launcher card (CrowdCompute, under Other), a command palette entry and a Help menu entry that open
// the CrowdCompute dashboard, served by the package's Jupyter server extension
// at BASE_URL/crowdcompute/, in a new browser tab.
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { IMainMenu } from '@jupyterlab/mainmenu';
import { LabIcon } from '@jupyterlab/ui-components';

const COMMAND = 'crowdcompute:open-dashboard';

const icon = new LabIcon({
  name: 'crowdcompute:icon',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <circle cx="12" cy="5" r="3"/><circle cx="5" cy="18" r="3"/><circle cx="19" cy="18" r="3"/>
    <path d="M11 7.5h2v3.5l5 5-1.4 1.4L12 12.8l-4.6 4.6L6 16l5-5z"/>
  </g>
</svg>`
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'crowdcompute-jupyter:plugin',
  description: 'Opens the CrowdCompute dashboard from the Launcher, the command palette and the Help menu.',
  autoStart: true,
  optional: [ILauncher, ICommandPalette, IMainMenu],
  activate: (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    mainMenu: IMainMenu | null
  ) => {
    app.commands.addCommand(COMMAND, {
      // A soft hyphen: the Launcher card is too narrow for the name on one line.
      label: args => (args['isLauncher'] ? 'Crowd\u00adCompute' : 'Open CrowdCompute dashboard'),
      caption: 'Open the CrowdCompute dashboard (this server\'s clusters) in a new browser tab',
      icon,
      execute: () => {
        window.open(URLExt.join(PageConfig.getBaseUrl(), 'crowdcompute/'), '_blank');
      }
    });
    launcher?.add({ command: COMMAND, category: 'Other', rank: 10, args: { isLauncher: true } });
    palette?.addItem({ command: COMMAND, category: 'CrowdCompute' });
    mainMenu?.helpMenu.addGroup([{ command: COMMAND }], 5);
  }
};

export default plugin;
